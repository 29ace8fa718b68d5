# Type stubs for assocmem.torch (differentiable Hopfield retrieval on CPU tensors).
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy.typing as npt
import torch

from . import LayeredNetwork
from .lagrangians import Lagrangian

__all__ = ["hopfield_retrieve", "hopfield_energy", "spherical_retrieve", "spherical_energy", "empty_cache",
           "memory_reserved", "Hopfield",
           "HopfieldPooling", "HopfieldLayer", "HopfieldCore", "HopfieldEncoderLayer", "HopfieldDecoderLayer",
           "LayeredMemory", "Neurons", "DenseSynapse", "Conv2dSynapse"]

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

def empty_cache() -> int: ...
def memory_reserved() -> int: ...

_Mask = Optional[torch.Tensor]

class Hopfield(torch.nn.Module):
    association_core: HopfieldCore
    norm_stored_pattern: Optional[torch.nn.LayerNorm]
    norm_state_pattern: Optional[torch.nn.LayerNorm]
    norm_pattern_projection: Optional[torch.nn.LayerNorm]
    def __init__(self, input_size: Optional[int] = None, hidden_size: Optional[int] = None,
                 output_size: Optional[int] = None, pattern_size: Optional[int] = None, num_heads: int = 1,
                 scaling: Optional[Union[float, torch.Tensor]] = None,
                 update_steps_max: Optional[Union[int, torch.Tensor]] = 0,
                 update_steps_eps: Union[float, torch.Tensor] = 1e-4,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_stored_pattern_eps: float = 1e-5, normalize_state_pattern: bool = True,
                 normalize_state_pattern_affine: bool = True, normalize_state_pattern_eps: float = 1e-5,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_pattern_projection_eps: float = 1e-5, normalize_hopfield_space: bool = False,
                 normalize_hopfield_space_affine: bool = False, normalize_hopfield_space_eps: float = 1e-5,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, pattern_projection_as_connected: bool = False,
                 stored_pattern_size: Optional[int] = None, pattern_projection_size: Optional[int] = None,
                 batch_first: bool = True, association_activation: Optional[str] = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False, add_zero_association: bool = False,
                 disable_out_projection: bool = False) -> None: ...
    def reset_parameters(self) -> None: ...
    def forward(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                stored_pattern_padding_mask: _Mask = None, association_mask: _Mask = None) -> torch.Tensor: ...
    def get_association_matrix(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                               stored_pattern_padding_mask: _Mask = None, association_mask: _Mask = None) -> torch.Tensor: ...
    def get_projected_pattern_matrix(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                                     stored_pattern_padding_mask: _Mask = None,
                                     association_mask: _Mask = None) -> torch.Tensor: ...
    @property
    def batch_first(self) -> bool: ...
    @property
    def scaling(self) -> Union[float, torch.Tensor]: ...
    @property
    def stored_pattern_dim(self) -> Optional[int]: ...
    @property
    def state_pattern_dim(self) -> Optional[int]: ...
    @property
    def pattern_projection_dim(self) -> Optional[int]: ...
    @property
    def input_size(self) -> Optional[int]: ...
    @property
    def hidden_size(self) -> Optional[int]: ...
    @property
    def output_size(self) -> Optional[int]: ...
    @property
    def pattern_size(self) -> Optional[int]: ...
    @property
    def update_steps_max(self) -> Optional[Union[int, torch.Tensor]]: ...
    @property
    def update_steps_eps(self) -> Union[float, torch.Tensor]: ...
    @property
    def stored_pattern_as_static(self) -> bool: ...
    @property
    def state_pattern_as_static(self) -> bool: ...
    @property
    def pattern_projection_as_static(self) -> bool: ...
    @property
    def normalize_stored_pattern(self) -> bool: ...
    @property
    def normalize_stored_pattern_affine(self) -> bool: ...
    @property
    def normalize_state_pattern(self) -> bool: ...
    @property
    def normalize_state_pattern_affine(self) -> bool: ...
    @property
    def normalize_pattern_projection(self) -> bool: ...
    @property
    def normalize_pattern_projection_affine(self) -> bool: ...
    @property
    def normalize_hopfield_space(self) -> bool: ...
    @property
    def normalize_hopfield_space_affine(self) -> bool: ...

class _Wrapper(torch.nn.Module):
    hopfield: Hopfield
    @property
    def quantity(self) -> int: ...
    @property
    def batch_first(self) -> bool: ...
    @property
    def scaling(self) -> Union[float, torch.Tensor]: ...
    @property
    def stored_pattern_dim(self) -> Optional[int]: ...
    @property
    def state_pattern_dim(self) -> Optional[int]: ...
    @property
    def pattern_projection_dim(self) -> Optional[int]: ...
    @property
    def input_size(self) -> Optional[int]: ...
    @property
    def hidden_size(self) -> Optional[int]: ...
    @property
    def output_size(self) -> Optional[int]: ...
    @property
    def pattern_size(self) -> Optional[int]: ...
    @property
    def update_steps_max(self) -> Optional[Union[int, torch.Tensor]]: ...
    @property
    def update_steps_eps(self) -> Union[float, torch.Tensor]: ...
    @property
    def stored_pattern_as_static(self) -> bool: ...
    @property
    def state_pattern_as_static(self) -> bool: ...
    @property
    def pattern_projection_as_static(self) -> bool: ...
    @property
    def normalize_stored_pattern(self) -> bool: ...
    @property
    def normalize_stored_pattern_affine(self) -> bool: ...
    @property
    def normalize_state_pattern(self) -> bool: ...
    @property
    def normalize_state_pattern_affine(self) -> bool: ...
    @property
    def normalize_pattern_projection(self) -> bool: ...
    @property
    def normalize_pattern_projection_affine(self) -> bool: ...

class HopfieldPooling(_Wrapper):
    pooling_weights: torch.nn.Parameter
    def __init__(self, input_size: int, hidden_size: Optional[int] = None, output_size: Optional[int] = None,
                 pattern_size: Optional[int] = None, num_heads: int = 1,
                 scaling: Optional[Union[float, torch.Tensor]] = None,
                 update_steps_max: Optional[Union[int, torch.Tensor]] = 0,
                 update_steps_eps: Union[float, torch.Tensor] = 1e-4,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_state_pattern: bool = True, normalize_state_pattern_affine: bool = True,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_hopfield_space: bool = False, normalize_hopfield_space_affine: bool = False,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, pattern_projection_as_connected: bool = False,
                 stored_pattern_size: Optional[int] = None, pattern_projection_size: Optional[int] = None,
                 batch_first: bool = True, association_activation: Optional[str] = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False, add_zero_association: bool = False,
                 disable_out_projection: bool = False, quantity: int = 1, trainable: bool = True) -> None: ...
    def reset_parameters(self) -> None: ...
    def forward(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
                stored_pattern_padding_mask: _Mask = None, association_mask: _Mask = None) -> torch.Tensor: ...
    def get_association_matrix(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
                               stored_pattern_padding_mask: _Mask = None, association_mask: _Mask = None) -> torch.Tensor: ...
    def get_projected_pattern_matrix(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
                                     stored_pattern_padding_mask: _Mask = None,
                                     association_mask: _Mask = None) -> torch.Tensor: ...

class HopfieldLayer(_Wrapper):
    lookup_weights: torch.nn.Parameter
    target_weights: Optional[torch.nn.Parameter]
    def __init__(self, input_size: int, hidden_size: Optional[int] = None, output_size: Optional[int] = None,
                 pattern_size: Optional[int] = None, num_heads: int = 1,
                 scaling: Optional[Union[float, torch.Tensor]] = None,
                 update_steps_max: Optional[Union[int, torch.Tensor]] = 0,
                 update_steps_eps: Union[float, torch.Tensor] = 1e-4,
                 lookup_weights_as_separated: bool = False, lookup_targets_as_trainable: bool = True,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_state_pattern: bool = True, normalize_state_pattern_affine: bool = True,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_hopfield_space: bool = False, normalize_hopfield_space_affine: bool = False,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, pattern_projection_as_connected: bool = False,
                 stored_pattern_size: Optional[int] = None, pattern_projection_size: Optional[int] = None,
                 batch_first: bool = True, association_activation: Optional[str] = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False, add_zero_association: bool = False,
                 disable_out_projection: bool = False, quantity: int = 1, trainable: bool = True) -> None: ...
    def reset_parameters(self) -> None: ...
    def forward(self, input: torch.Tensor, stored_pattern_padding_mask: _Mask = None,
                association_mask: _Mask = None) -> torch.Tensor: ...
    def get_association_matrix(self, input: torch.Tensor, stored_pattern_padding_mask: _Mask = None,
                               association_mask: _Mask = None) -> torch.Tensor: ...
    def get_projected_pattern_matrix(self, input: torch.Tensor, stored_pattern_padding_mask: _Mask = None,
                                     association_mask: _Mask = None) -> torch.Tensor: ...

class HopfieldCore(torch.nn.Module):
    embed_dim: Optional[int]
    kdim: Optional[int]
    vdim: Optional[int]
    num_heads: int
    dropout: float
    head_dim: Optional[int]
    pattern_dim: Optional[int]
    out_dim: Optional[int]
    in_proj_weight: Optional[torch.nn.Parameter]
    in_proj_bias: Optional[torch.nn.Parameter]
    q_proj_weight: Optional[torch.nn.Parameter]
    k_proj_weight: Optional[torch.nn.Parameter]
    v_proj_weight: Optional[torch.nn.Parameter]
    out_proj: Optional[torch.nn.Linear]
    def __init__(self, embed_dim: Optional[int] = None, num_heads: int = 1, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, head_dim: Optional[int] = None, pattern_dim: Optional[int] = None,
                 out_dim: Optional[int] = None, disable_out_projection: bool = False, key_as_static: bool = False,
                 query_as_static: bool = False, value_as_static: bool = False, value_as_connected: bool = False,
                 normalize_pattern: bool = False, normalize_pattern_affine: bool = False,
                 normalize_pattern_eps: float = 1e-5) -> None: ...
    def reset_parameters(self) -> None: ...
    def associate(self, state: torch.Tensor, stored: torch.Tensor, proj: torch.Tensor,
                  stored_pattern_padding_mask: _Mask, association_mask: _Mask, scaling: list, steps: list, eps: list,
                  what: Union[str, Tuple[str, ...]] = "output",
                  norms: Optional[Tuple[Optional[torch.nn.Module], Optional[torch.nn.Module]]] = None
                  ) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]: ...
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: _Mask = None, need_weights: bool = True, attn_mask: _Mask = None,
                scaling: Optional[Union[float, torch.Tensor]] = None,
                update_steps_max: Optional[Union[int, torch.Tensor]] = 0,
                update_steps_eps: Union[float, torch.Tensor] = 1e-4, return_raw_associations: bool = False,
                return_pattern_projections: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]: ...

class _TransformerLayer(torch.nn.Module):
    linear_residual: torch.nn.Linear
    dropout_residual: torch.nn.Dropout
    linear_output: torch.nn.Linear
    norm_output: torch.nn.LayerNorm
    dropout_output: torch.nn.Dropout
    @property
    def output_size(self) -> int: ...

class HopfieldEncoderLayer(_TransformerLayer):
    hopfield_association: Hopfield
    norm_residual: torch.nn.LayerNorm
    dropout_hopfield_association: torch.nn.Dropout
    def __init__(self, hopfield_association: Hopfield, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu") -> None: ...
    def reset_parameters(self) -> None: ...
    def forward(self, src: torch.Tensor, src_mask: _Mask = None,
                src_key_padding_mask: _Mask = None) -> torch.Tensor: ...
    def get_association_matrix(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                               ) -> torch.Tensor: ...
    @property
    def batch_first(self) -> bool: ...
    @property
    def input_size(self) -> Optional[int]: ...

class HopfieldDecoderLayer(_TransformerLayer):
    hopfield_association_self: Hopfield
    hopfield_association_cross: Hopfield
    norm_residual_self: torch.nn.LayerNorm
    norm_residual_cross: torch.nn.LayerNorm
    dropout_hopfield_association_self: torch.nn.Dropout
    dropout_hopfield_association_cross: torch.nn.Dropout
    def __init__(self, hopfield_association_self: Hopfield, hopfield_association_cross: Hopfield,
                 dim_feedforward: int = 2048, dropout: float = 0.1, activation: str = "relu") -> None: ...
    def reset_parameters(self) -> None: ...
    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, tgt_mask: _Mask = None, memory_mask: _Mask = None,
                tgt_key_padding_mask: _Mask = None, memory_key_padding_mask: _Mask = None) -> torch.Tensor: ...
    def get_association_matrix_self(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                                    ) -> torch.Tensor: ...
    def get_association_matrix_cross(self, input: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                                     ) -> torch.Tensor: ...
    @property
    def batch_first(self) -> bool: ...
    @property
    def input_size(self) -> Optional[int]: ...

class Neurons:
    name: str
    shape: Tuple[int, ...]
    lagrangian: Lagrangian
    tau: float
    bias: bool
    def __init__(self, name: str, shape: Union[int, Sequence[int]], lagrangian: Lagrangian, tau: float = 1.0,
                 bias: bool = False) -> None: ...
    @property
    def size(self) -> int: ...

class DenseSynapse:
    source: str
    target: str
    std: Optional[float]
    def __init__(self, source: str, target: str, std: Optional[float] = None) -> None: ...

class Conv2dSynapse:
    source: str
    target: str
    kernel_size: Tuple[int, int]
    stride: int
    padding: int
    def __init__(self, source: str, target: str, kernel_size: Union[int, Tuple[int, int]], stride: int = 1,
                 padding: int = 0) -> None: ...

class LayeredMemory(torch.nn.Module):
    neurons: List[Neurons]
    specs: List[Union[DenseSynapse, Conv2dSynapse]]
    offsets: List[int]
    threads: int
    synapses: torch.nn.ParameterList
    bias: torch.nn.ParameterDict
    def __init__(self, neurons: Sequence[Neurons], synapses: Sequence[Union[DenseSynapse, Conv2dSynapse]],
                 threads: int = 0, dtype: torch.dtype = ...) -> None: ...
    @property
    def size(self) -> int: ...
    def split(self, x: torch.Tensor) -> Dict[str, torch.Tensor]: ...
    def join(self, parts: Dict[str, torch.Tensor], batch: Optional[int] = None) -> torch.Tensor: ...
    def network(self) -> "LayeredNetwork": ...
    def save(self, directory: str, x0: Union[None, torch.Tensor, npt.ArrayLike] = None, **options: object) -> str: ...
    def energy(self, x: torch.Tensor) -> torch.Tensor: ...
    def activations(self, x: torch.Tensor) -> torch.Tensor: ...
    def forward(self, x0: torch.Tensor, steps: int = 10, dt: float = 0.1, implicit: bool = False, tol: float = 1e-6,
                max_iterations: int = 1000) -> torch.Tensor: ...
    def trajectory(self, x0: torch.Tensor, steps: int = 10, dt: float = 0.1) -> Tuple[torch.Tensor, torch.Tensor]: ...
    def extra_repr(self) -> str: ...
