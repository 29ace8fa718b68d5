# Type stubs for assocmem.distributed (models A, B and C over a sharded store on MPI ranks; mpi4py).
from typing import Any, List, Optional

import numpy.typing as npt

from . import Retrieval

__all__ = ["ShardedMemory"]

class ShardedMemory:
    def __init__(self, manifest: Any, comm: Any = None, threads: int = 0) -> None: ...
    def retrieve(self, queries: npt.ArrayLike, model: str = "B", steps: Optional[int] = None,
                 tol: Optional[float] = None, step: Optional[float] = None, *, beta: float = 1.0,
                 F: Optional[str] = None, n: Optional[float] = None, alpha: float = 1.0) -> Any: ...
    def retrieve_details(self, queries: npt.ArrayLike, model: str = "B", steps: Optional[int] = None,
                         tol: Optional[float] = None, step: Optional[float] = None, *, beta: float = 1.0,
                         F: Optional[str] = None, n: Optional[float] = None, alpha: float = 1.0, top_k: int = 0,
                         energy: bool = True) -> Retrieval: ...
    @property
    def rank(self) -> int: ...
    @property
    def ranks(self) -> int: ...
    @property
    def local_shards(self) -> List[int]: ...
    @property
    def n_memories(self) -> int: ...
    @property
    def n_features(self) -> int: ...
