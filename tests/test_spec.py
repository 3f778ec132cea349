"""The model spec (models/spec.py): one spec class per model kind nesting the chosen members'
parts, stored as nested JSON; the flat spec of earlier releases converts to the same model."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
from conftest import flat_spec_json

from vaecli.config import load_config
from vaecli.models import build, from_flat, from_json, spec_from_config
from vaecli.models import spec as specs

KINDS = {
    "mlp": ["model.hidden=[8]", "posterior=iaf", "posterior.flows=2", "posterior.hidden=4", "likelihood=logistic"],
    "conv": ["model.hidden=[4,8]", "model.latent=categorical", "model.categories=3", "model.conditional=true"],
    "ae": ["model=ae", "model.hidden=[8]"],
    "hvae": ["model=hvae", "model.hidden=[8]", "model.latent_dim2=2", "model.hidden2=[4]"],
    "ladder": ["model=ladder", "model.hidden=[8]", "model.groups=2", "model.decoder=pixelcnn", "model.ar_layers=1"],
    "vqvae": ["model=vqvae", "model.hidden=[4,8]", "model.code_dim=3", "model.codebook_size=8"],
}


def spec_of(overrides):
    cfg = load_config(["dataset=shapes", "model.latent_dim=3", *overrides]).cfg
    return spec_from_config(cfg.model, cfg.likelihood, cfg.prior, (1, 8, 8), 3, cfg.dataset, cfg.posterior, cfg.kl)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_stored_spec_is_nested_and_reads_back_as_the_same_model(name):
    spec = spec_of(KINDS[name])
    stored = json.loads(json.dumps(spec.to_json()))
    assert "body" in stored and isinstance(stored["likelihood"], dict) and "codebook_size" not in stored
    again = from_json(stored)
    assert again == spec and type(again) is type(spec)
    torch.manual_seed(0)
    a = build(spec).state_dict()
    torch.manual_seed(0)
    b = build(again).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_flat_spec_of_earlier_releases_converts_to_the_same_spec(name):
    spec = spec_of(KINDS[name])
    assert from_json(flat_spec_json(spec)) == spec


def test_each_kind_reads_only_its_parts():
    assert not hasattr(spec_of(KINDS["vqvae"]), "decoder") and spec_of(KINDS["vqvae"]).quantizer.codebook_size == 8
    assert spec_of(KINDS["conv"]).categorical.categories == 3 and spec_of(KINDS["conv"]).num_classes == 3
    assert spec_of(KINDS["hvae"]).latent_dim2 == 2 and not hasattr(spec_of(KINDS["hvae"]), "groups")
    from vaecli import registry

    registry.load()
    assert set(specs.SPECS) == {"vae", "ae", "categorical", "hvae", "ladder", "vqvae", "autoencoder_kl"}
    for cls in (specs.ModelSpec, *specs.SPECS.values(), *specs.PARTS.values()):
        assert len(fields(cls)) <= 12, cls  # no bag: a kind's own fields and its parts


def test_a_spec_naming_an_unknown_kind_or_field_is_refused():
    with pytest.raises(ValueError, match="unknown model kind 'gan'"):
        from_json({"kind": "gan", "body": {}})
    from vaecli.models.vqvae_config import VQVAESpec

    with pytest.raises(ValueError, match="has no groups"):
        from_json({**VQVAESpec().to_json(), "groups": 2})
    with pytest.raises(TypeError, match="no field 'flux'"):
        from_flat("mlp", (1, 8, 8), flux=3)
