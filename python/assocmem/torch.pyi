# Type stubs for assocmem.torch (differentiable Hopfield retrieval on CPU tensors).
from typing import Optional, Union

import numpy.typing as npt
import torch

__all__ = ["hopfield_retrieve", "hopfield_energy", "spherical_retrieve", "spherical_energy"]

def hopfield_retrieve(queries: torch.Tensor, keys: torch.Tensor, values: Optional[torch.Tensor] = None, *,
                      beta: Union[float, torch.Tensor] = 1.0,
                      mask: Union[None, torch.Tensor, npt.ArrayLike] = None, steps: int = 1,
                      implicit: bool = False, fixed_point_tol: float = 1e-6, threads: int = 0) -> torch.Tensor: ...
def hopfield_energy(states: torch.Tensor, keys: torch.Tensor, *, beta: Union[float, torch.Tensor] = 1.0,
                    mask: Union[None, torch.Tensor, npt.ArrayLike] = None, threads: int = 0) -> torch.Tensor: ...
def spherical_retrieve(queries: torch.Tensor, memories: torch.Tensor, *, F: Optional[str] = None,
                       n: Optional[float] = None, beta: float = 1.0, alpha: float = 1.0, step: Optional[float] = None,
                       steps: Optional[int] = None, mask: Union[None, torch.Tensor, npt.ArrayLike] = None,
                       threads: int = 0) -> torch.Tensor: ...
def spherical_energy(states: torch.Tensor, memories: torch.Tensor, *, F: Optional[str] = None,
                     n: Optional[float] = None, beta: float = 1.0,
                     mask: Union[None, torch.Tensor, npt.ArrayLike] = None, threads: int = 0) -> torch.Tensor: ...
