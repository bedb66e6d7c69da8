"""The evaluation library shared by the benchmark modules (eval/, installed as `streammind_eval`):
pure metrics, the task runner, the free-running and teacher-forced protocols, the offline
answering path, re-scoring, plots and the LLM judge client."""
