// Opens an AgentDB shard through the real agentdb library and prints, as the last line of stdout,
// one JSON object: the open time, agentdb's learning metrics for a session, and its prediction for
// a state.   node read_shard.mjs SHARD SESSION_ID STATE
import { createDatabase, EmbeddingService, LearningSystem } from 'agentdb';

const [file, sessionId, state] = process.argv.slice(2);
const started = performance.now();
const db = await createDatabase(file);
db.prepare('SELECT count(*) AS n FROM learning_sessions').get(); // sql.js parses lazily: touch the file
const openMs = performance.now() - started;
// A 'local' embedder never downloads a model; the shard holds the embedding of the state asked for.
const learning = new LearningSystem(db, new EmbeddingService({ model: 'local', dimension: 384, provider: 'local' }));
// MovieLens times are years old: a window reaching back past 1995.
const metrics = await learning.getMetrics({ sessionId, timeWindowDays: 100000, includeTrends: false, groupBy: 'session' });
Math.random = () => 0.999999; // agentdb's epsilon-greedy explores when random() < rate: ask for the greedy action
const prediction = await learning.predict(sessionId, state);
const embedded = db.prepare('SELECT count(*) AS n FROM learning_state_embeddings WHERE session_id = ?').get(sessionId).n;
console.log(JSON.stringify({ openMs, metrics, prediction, embedded }));
// No db.close(): agentdb's close() writes the whole database back to the file.
