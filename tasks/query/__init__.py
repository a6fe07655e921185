"""Reading the loaded stores: vector search (Milvus, PostgreSQL) and explanations (the neo4j graph)."""
