"""Your own encoder and decoder networks, as Hydra `_target_` nodes (model.encoder_net,
model.decoder_net on model=mlp, conv, resnet and ae).

The contract (docs/guide/own-networks.md):
  encoder: constructed as Target(image_shape=(C, H, W), **other_keys); maps images (B, C, H, W)
           in [0, 1] to features (B, F). vaecli finds F by one dry run and adds the head that
           gives the posterior's parameters.
  decoder: constructed as Target(image_shape=(C, H, W), latent_dim=D, out_channels=P, **other_keys);
           maps (B, D) to (B, P, H, W): P is the likelihood's parameters per pixel times C (1 per
           channel for a Bernoulli, more for a logistic mixture; a PixelCNN decoder's conditioning
           channels). D is the latent size, plus the number of classes for a conditional model.
Both must be torch.nn.Modules. The check runs when the model is built, so a network that breaks
the contract is refused before any run folder exists, in one line naming the key.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from . import blocks

KEYS = {"encoder": "model.encoder_net", "decoder": "model.decoder_net"}


def _target(node: dict, role: str):
    key = KEYS[role]
    path = node.get("_target_")
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"{key}._target_ must name a class or function as package.module.Name (got {path!r})")
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ModuleNotFoundError, or the user's module failing on import
        raise ValueError(f"{key}._target_={path} cannot be imported ({type(e).__name__}: {e}); put its package on "
                         "PYTHONPATH (or pip install it)") from None
    if not hasattr(module, attribute):
        raise ValueError(f"{key}._target_={path}: module {module_name} has no {attribute!r}")
    return getattr(module, attribute)


def _construct(node: dict, role: str, **contract) -> nn.Module:
    key = KEYS[role]
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    clash = sorted(set(kwargs) & set(contract))
    if clash:
        raise ValueError(f"{key}.{clash[0]} is set by vaecli (the contract passes {', '.join(contract)}): drop it")
    try:
        net = _target(node, role)(**contract, **kwargs)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{key}._target_={node['_target_']} could not be constructed with "
                         f"{', '.join(list(contract) + list(kwargs))} ({type(e).__name__}: {e})") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{key}._target_={node['_target_']} gave a {type(net).__name__}, not a torch.nn.Module")
    return net


def _dry_run(net: nn.Module, x: torch.Tensor, key: str, target: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            return net(x)
    except Exception as e:
        raise ValueError(f"{key}._target_={target} failed on a batch of shape {tuple(x.shape)} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def encoder(node: dict, image_shape: tuple[int, int, int]) -> tuple[nn.Module, int]:
    """The user's encoder body and the size F of its features (found by a dry run on zeros)."""
    net = _construct(node, "encoder", image_shape=tuple(image_shape))
    out = _dry_run(net, torch.zeros(2, *image_shape), KEYS["encoder"], node["_target_"])
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{KEYS['encoder']}._target_={node['_target_']} must map (B, C, H, W) images to (B, F) "
                         f"features; it gave {shape} for a batch of shape {(2, *image_shape)}")
    return net, int(out.shape[1])


def decoder(node: dict, image_shape: tuple[int, int, int], latent_dim: int, out_channels: int) -> nn.Module:
    """The user's decoder, checked to map (B, latent_dim) to (B, out_channels, H, W)."""
    net = _construct(node, "decoder", image_shape=tuple(image_shape), latent_dim=latent_dim, out_channels=out_channels)
    out = _dry_run(net, torch.zeros(2, latent_dim), KEYS["decoder"], node["_target_"])
    want = (2, out_channels, *image_shape[1:])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{KEYS['decoder']}._target_={node['_target_']} must map (B, {latent_dim}) latents to "
                         f"(B, {out_channels}, {image_shape[1]}, {image_shape[2]}) (out_channels: the likelihood's "
                         f"parameters per pixel times the image channels); it gave {shape}")
    return net


def body_encoder(spec) -> tuple[nn.Module, int]:
    """The encoder body of a spec: the user's (spec.body.networks["encoder"]) or vaecli's own."""
    body = spec.body
    node = (body.networks or {}).get("encoder")
    if node:
        return encoder(node, spec.image_shape)
    return blocks.encoder(body.arch, spec.image_shape, body.hidden, body.activation, body.norm)


def body_decoder(spec, in_features: int, out_channels: int) -> nn.Module:
    """The decoder of a spec from (B, in_features): the user's or vaecli's own."""
    body = spec.body
    node = (body.networks or {}).get("decoder")
    if node:
        return decoder(node, spec.image_shape, in_features, out_channels)
    return blocks.decoder(body.arch, spec.image_shape, body.hidden, in_features, out_channels, body.activation,
                          body.norm)
