"""The model family: parameter counts, causality, padding invariance, losses, learning."""

import json

import pytest
import torch

import photon
from photon.cli import main as cli_main
from photon.model.config import ConfigError, PhotonConfig, config_from_dict
from tests.models import MODELS, make

PAPER_COUNTS = {
    "photon-600m": 646_399_104,
    "photon-900m": 907_162_368,
    "photon-1.2b": 1_229_531_520,
    "vanilla-600m": 610_915_968,
    "vanilla-900m": 867_114_752,
    "vanilla-1.2b": 1_184_657_280,
    "block-600m": 629_770_752,
    "block-900m": 887_878_656,
    "block-1.2b": 1_207_395_840,
}


@pytest.mark.parametrize("name", PAPER_COUNTS)
def test_paper_parameter_counts(name):
    total, modules = photon.count_parameters(photon.get_preset(name))
    assert total == PAPER_COUNTS[name]
    assert sum(modules.values()) == total


@pytest.mark.parametrize("size", ["tiny", "small", "600m", "900m", "1.2b"])
def test_bounded_presets_drop_only_the_level1_query_and_key_weights(size):
    """photon-SIZE-bounded is photon-SIZE with latent teacher forcing (no parameters) and a
    level-1 encoder of window 1, whose attention has no query/key projections: 2·D² fewer
    per level-1 encoder layer (photon-600m-bounded: 624,247,936)."""
    paper = photon.get_preset(f"photon-{size}")
    bounded = photon.get_preset(f"photon-{size}-bounded")
    dropped = 2 * paper.d_model ** 2 * paper.encoder_layers[0]
    assert photon.count_parameters(bounded)[0] == photon.count_parameters(paper)[0] - dropped
    if size == "600m":
        assert photon.count_parameters(bounded)[0] == 624_247_936


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_cpu_trios_match_in_size(size):
    counts = [photon.count_parameters(photon.get_preset(f"{k}-{size}"))[0]
              for k in ("photon", "block", "vanilla")]
    center = (max(counts) + min(counts)) / 2
    assert all(abs(c - center) / center <= 0.05 for c in counts), counts
    if size == "tiny":
        assert max(counts) < 1_000_000


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("teacher_weight", [None, 0.5])
def test_causality(kind, teacher_weight):
    """Also halfway through the latent curriculum, which mixes encoder states into the
    level >= 2 decoders' inputs."""
    model = make(kind)
    if teacher_weight is not None and not isinstance(model, photon.PhotonLM):
        pytest.skip("the curriculum weight is PHOTON's")
    extra = {} if teacher_weight is None else {"teacher_weight": teacher_weight}
    T = 45
    ids = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(ids, **extra).logits
        for k in (0, 7, 16, 31, 44):
            changed = ids.clone()
            changed[:, k] = (changed[:, k] + 1) % 256
            out = model(changed, **extra).logits
            assert torch.equal(out[:, :k], base[:, :k]), f"token {k} leaked backwards"
            assert not torch.allclose(out[:, k:], base[:, k:]), f"token {k} is never used"


@pytest.mark.parametrize("kind", MODELS)
def test_padding_invariance(kind):
    model = make(kind)
    ids = torch.randint(0, 256, (3, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
        for T in (1, 3, 13, 16, 17, 33, 50):
            part = model(ids[:, :T]).logits
            torch.testing.assert_close(part, full[:, :T], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
def test_overfits_one_batch(kind):
    model = make(kind).train()
    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(120):
        loss = model(ids, labels=ids).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first, (first, loss.item())


def test_reconstruction_loss_zero_iff_reconstructions_match():
    model = make("photon-L3")
    ids = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        states = model.encode(ids)
        # Reconstructions X̂^(L-1)…X̂^(1) equal to the encoder states (plus one extra position,
        # as the decoder produces one meta-context more than was encoded).
        exact = [torch.cat((s, s[:, -1:]), dim=1) for s in reversed(states[:-1])]
        assert model.reconstruction_loss(exact, states).item() == pytest.approx(0, abs=1e-6)
        recons, _ = model.decode_top_down(torch.nn.functional.pad(states[-1], (0, 0, 1, 0)))
        assert model.reconstruction_loss(recons, states).item() > 0.01


def test_loss_weighting():
    ids = torch.randint(0, 256, (2, 48))
    out0 = make("photon-B")(ids, labels=ids)
    assert out0.losses["rec"].item() > 0
    assert torch.equal(out0.loss, out0.losses["token"])
    out = make("photon-B", rec_alpha=0.3)(ids, labels=ids)
    torch.testing.assert_close(out.loss, out.losses["token"] + 0.3 * out.losses["rec"])


def test_teacher_weight_moves_between_the_two_forms():
    """Weight 1 read through the own-output loop equals the parallel teacher-forced pass;
    weight 0 is the paper's form (the default of a model without latent teacher forcing)."""
    model = make("photon-B")
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        states = model.encode_prefix(ids)
        forced = model.predict(ids, states, teacher_weight=1.0).logits
        looped = model.predict(ids, states, teacher_weight=1.0 - 1e-9).logits
        paper = model.predict(ids, states, teacher_weight=0.0).logits
        halfway = model.predict(ids, states, teacher_weight=0.5).logits
    torch.testing.assert_close(looped, forced, atol=1e-5, rtol=1e-5)
    assert torch.equal(paper, model(ids).logits)
    assert not torch.allclose(halfway, paper) and not torch.allclose(halfway, forced)
    # The first meta-context's first sub-chunk reads no earlier latent: the same in every form.
    torch.testing.assert_close(halfway[:, :3], paper[:, :3])  # logits 0..2: tokens 1..3


def test_rec_detach_stops_gradient_into_encoder_target():
    ids = torch.randint(0, 256, (2, 32))
    grads = {}
    for detach in (False, True):
        model = make("photon-B", rec_alpha=1.0, rec_detach=detach)
        model(ids, labels=ids).losses["rec"].backward()
        # Encoder level 1 reaches L_rec twice: through its state X^(1) as the target, and
        # through level 2 and the decoder as the reconstruction. Detaching cuts the first.
        grads[detach] = model.encoders[0].blocks[0].mlp.w2.weight.grad.abs().sum().item()
    assert grads[False] != grads[True]


def test_l1_has_no_reconstruction_term():
    ids = torch.randint(0, 256, (2, 32))
    assert make("block")(ids, labels=ids).losses["rec"].item() == 0


@pytest.mark.parametrize("bad, field", [
    ({"chunk_sizes": (), "encoder_layers": (), "decoder_layers": ()}, "chunk_sizes"),
    ({"d_model": 66, "n_heads": 3}, "d_model"),
    ({"d_model": 64, "n_heads": 5}, "n_heads"),
    ({"d_ff": 0}, "d_ff"),
    ({"chunk_sizes": (4, -1)}, "chunk_sizes"),
    ({"encoder_layers": (1,)}, "encoder_layers"),
    ({"variant": "C"}, "variant"),
    ({"rec_alpha": -1.0}, "rec_alpha"),
])
def test_invalid_configs_name_the_field(bad, field):
    base = photon.get_preset("photon-tiny").to_dict()
    base.pop("model_type")
    with pytest.raises(ConfigError, match=f"^{field}:"):
        PhotonConfig(**{**base, **bad})


def test_config_round_trip_and_unknown_preset():
    for name in ("photon-small", "vanilla-small", "block-1.2b"):
        cfg = photon.get_preset(name)
        assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="known presets: photon-600m"):
        photon.get_preset("photon-7b")


def test_out_of_vocabulary_ids_are_rejected():
    model = make("photon-B")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 256]]))


@pytest.mark.parametrize("name", ["vanilla-small", "vanilla-small-swa", "block-small",
                                  "photon-small", "photon-small-bounded"])
def test_training_flops_count_attention_at_the_training_context(name):
    """The 2k form of a small preset is the preset at `--seq-len 2048` (max_seq_len 2048):
    going from 512 to 2,048 tokens adds exactly the attention of every global stack over the
    longer context (mean keys per position (M + 1) / 2 over M positions of its level), and
    nothing for a window that is already full or for the local decoders."""
    c = photon.get_preset(name)

    def mean_keys(level_positions: int, window: int) -> float:
        if window and window < level_positions:  # all but the first window-1 see `window`
            return window - window * (window - 1) / 2 / level_positions
        return (level_positions + 1) / 2

    def attention_per_token(T: int) -> float:
        if c.kind == "vanilla":
            return c.n_layers * 4 * c.d_model * mean_keys(T, c.window)
        total = 0.0
        for level in range(1, c.n_levels + 1):
            per = c.tokens_per_position(level)
            window = c.encoder_window_of(level)
            keys = 0 if window == 1 else mean_keys(T // per, window)
            total += c.encoder_layers[level - 1] * 4 * c.d_model * keys / per
        return total

    grown = (photon.training_flops_per_token(c.replace(max_seq_len=2048))
             - photon.training_flops_per_token(c.replace(max_seq_len=512)))
    assert grown == pytest.approx(3 * (attention_per_token(2048) - attention_per_token(512)),
                                  abs=2)
    assert grown > 0


def test_flops_rank_models_sensibly():
    f = {k: photon.training_flops_per_token(photon.get_preset(f"{k}-600m"))
         for k in ("photon", "block", "vanilla")}
    # Matched parameters, but PHOTON's encoder sees 1/4 and 1/16 of the positions.
    assert f["photon"] < f["block"] < f["vanilla"]
    # Vanilla at 2048 context: 6·N_matmul plus attention, checked by hand.
    c = photon.get_preset("vanilla-600m")
    layer = 2 * (4 * c.d_model**2 + 3 * c.d_model * c.d_ff)
    attn = 4 * c.d_model * (2048 + 1) / 2
    expected = 3 * (c.n_layers * (layer + attn) + 2 * c.d_model * c.vocab_size)
    assert f["vanilla"] == round(expected)


def test_cli_info_json(capsys):
    assert cli_main(["info", "block-600m", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["name"] == "block-600m" and out["params"] == PAPER_COUNTS["block-600m"]
    assert out["flops_per_token"] > 0 and sum(out["modules"].values()) == out["params"]


def test_cli_unknown_name(capsys):
    assert cli_main(["info", "photon-7b"]) == 2
    assert "photon-tiny" in capsys.readouterr().err
