"""Tasks: one per `data.source`, each with its data sets, cold-start traces, behaviour
metrics, final-table rows and own rewards (`tasks.base.Task`); `get(name)` finds one."""

from start_jax.tasks import jsonl, world
from start_jax.tasks.base import Task, check_reward, get, register, registered

__all__ = ["Task", "check_reward", "get", "jsonl", "register", "registered", "world"]
