"""Training on verl: our episode engine inside verl's agent loop, and the data it reads.

Modules: `rows` (samples as verl dataset rows and back, the parquet export), `tokens` (one
episode's ids, mask and log-probs built turn by turn), `server_policy` (a Policy over verl's
token-in/token-out server), `episode` (one episode through it as verl's output record; no verl
import), `loop` (the agent-loop class verl registers as "mini_o3"; importing it needs verl).
Nothing outside this package imports it.
"""
