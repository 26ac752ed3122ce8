"""The sparse autoencoder module: encode activations into sparse codes, decode them back; saved as safetensors.

Shapes: activations (..., d_in) → codes (..., d_sae) → reconstruction (..., d_in). Inside, the inputs are
multiplied by ``scale`` (set by training so that their mean squared norm is ``d_in``) and the decoder's bias is
subtracted before encoding (Gao et al. 2024's pre-encoder bias); outputs are in the caller's units.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.config import load_config
from nnforge.errors import ConfigError, DataError, IntegrityError, ModelError, check_output_path, follow_umask
from nnforge.explain.sae._config import SAEConfig
from nnforge.explain.sae._registry import SAE_ARCHITECTURES, Codes, SAEArchitecture

__all__ = ["SAE"]

_METADATA_KEY = "nnforge.sae.config"


class SAE(nn.Module):
    """A sparse autoencoder over activations of width ``config.d_in`` with ``config.d_sae`` latents.

    The decoder's rows (one direction per latent) have unit norm; the encoder starts as their transpose, which
    keeps latents from dying at the start of training (Gao et al. 2024, section 2.4).

    Raises:
        ConfigError: ``config.d_in`` is not set.
    """

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        if config.d_in is None:
            raise ConfigError("SAE needs SAEConfig.d_in (the activations' width); set it or let train_sae set it")
        self.config = config
        self.d_in, self.d_sae = config.d_in, config.d_sae
        gen = torch.Generator().manual_seed(config.seed)
        directions = torch.randn(self.d_sae, self.d_in, generator=gen)
        directions /= directions.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(directions)  # (d_sae, d_in), unit rows
        self.W_enc = nn.Parameter(directions.t().clone())  # (d_in, d_sae)
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))
        self.register_buffer("scale", torch.ones(()))  # inputs are multiplied by it before encoding

    scale: torch.Tensor

    @property
    def architecture(self) -> SAEArchitecture:
        return SAE_ARCHITECTURES.get(self.config.architecture)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 1 or x.shape[-1] != self.d_in:
            raise ModelError(f"this SAE reads activations of width {self.d_in} (shape (..., {self.d_in})); "
                             f"got shape {tuple(x.shape)}")

    # --- in normalised units (what training sees) ------------------------------------------------------------

    def pre_activations(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Encoder outputs before the sparsifying activation: (N, d_in) normalised → (N, d_sae)."""
        return (x_norm - self.b_dec) @ self.W_enc + self.b_enc

    def decode_normalized(self, codes: Codes, bias: bool = True) -> torch.Tensor:
        """(N, d_in) normalised reconstruction of :class:`Codes` (dense, or values at indices)."""
        if codes.indices is None:
            out = codes.values @ self.W_dec
        else:  # the k decoder rows of each token, weighted and summed: (N, k) → (N, d_in)
            out = F.embedding_bag(codes.indices, self.W_dec, per_sample_weights=codes.values, mode="sum")
        return out + self.b_dec if bias else out

    # --- in the caller's units -------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse codes of activations ``x``: (..., d_in) → (..., d_sae), zero where a latent is off."""
        self._check(x)
        flat = x.reshape(-1, self.d_in).to(self.W_enc.dtype) * self.scale
        codes = self.architecture.activate(self.pre_activations(flat), self.config).dense(self.d_sae)
        return codes.reshape(*x.shape[:-1], self.d_sae)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Activations rebuilt from codes: (..., d_sae) → (..., d_in)."""
        if codes.shape[-1] != self.d_sae:
            raise ModelError(f"this SAE has {self.d_sae} latents; got codes of shape {tuple(codes.shape)}")
        flat = self.decode_normalized(Codes(codes.reshape(-1, self.d_sae).to(self.W_dec.dtype))) / self.scale
        return flat.reshape(*codes.shape[:-1], self.d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` (same shape and dtype)."""
        return self.decode(self.encode(x)).to(x.dtype)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Put the decoder's rows back at unit norm (after an optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    # --- files -----------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights and the config (in the file's metadata) to one safetensors file, atomically."""

        target = Path(path)
        check_output_path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        return save_safetensors(target, tensors, {_METADATA_KEY: json.dumps(self.config.to_dict(), sort_keys=True)})

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> SAE:
        """Read an SAE written by :meth:`save` (no pickle: tensors and a JSON config only).

        Raises:
            DataError: the file is missing or not an nnforge SAE.
            IntegrityError: its tensors do not have the shapes its config says.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        source = Path(path)
        if not source.is_file():
            raise DataError(f"{source}: no such SAE file")
        try:
            with safe_open(str(source), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(source), device=str(map_location))
        except (SafetensorError, OSError) as exc:
            raise DataError(f"{source}: not a safetensors file ({exc})") from None
        if _METADATA_KEY not in meta:
            raise DataError(f"{source}: a safetensors file without an SAE config; was it written by SAE.save?")
        try:
            config = load_config(json.loads(meta[_METADATA_KEY]), where=f"{source.name} metadata")
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"{source}: the SAE config in its metadata is not JSON ({exc})") from None
        if not isinstance(config, SAEConfig):
            raise DataError(f"{source}: holds a {type(config).__name__}, not an SAEConfig")
        sae = cls(config)
        expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
        got = {name: tuple(t.shape) for name, t in tensors.items()}
        if expected != got:
            raise IntegrityError(f"{source}: tensors {got} do not match the config's shapes {expected}")
        sae.load_state_dict(tensors)
        return sae.to(map_location)


def save_safetensors(target: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` with ``metadata`` to ``target`` atomically (a temporary file renamed into place) with the
    umask's permissions (safetensors writes 0600); the SAE's and the tuned lens's files."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        follow_umask(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target

