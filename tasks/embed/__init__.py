"""The embed stage: movie and catalog texts through sentence-transformers, user vectors from ratings."""
