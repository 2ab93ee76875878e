"""The inference engine: the only owner of llama_cpp.Llama, on one worker thread.

worker.py runs the thread (submit, cancel, live limits, supervision), generation.py one request's
token loop, prompt.py the chat template and the prompt policy, structured.py and gbnf.py the
grammars (JSON schema, a client's GBNF, a required tool call), tools.py tool definitions and the
calls in a reply, sweep.py the thread sweep, admission.py the deadline estimates, cpuprobe.py
the CPU check, llama_compat.py every use of llama-cpp-python's internals.
"""

from daemon.cpus import default_threads
from daemon.engine.admission import DuplicateId, WouldMissDeadline
from daemon.engine.loading import ModelInfo
from daemon.engine.sweep import SweepResult
from daemon.engine.worker import Engine, EngineError

__all__ = [
    "DuplicateId",
    "Engine",
    "EngineError",
    "ModelInfo",
    "SweepResult",
    "WouldMissDeadline",
    "default_threads",
]
