"""DiffusionPolicy: sampled log-probs (DDIM-eta and Flow-GRPO SDE) are recomputed exactly (ratio 1
before any update), with and without guidance; denoising / flow-matching SFT lowers its loss; saves reload."""

import pytest
import torch

from mmpost.adapters.diffusion_policy import DiffusionPolicy, TileDiffusionModel

CONFIG = {"tile_size": 16, "channels": [8, 16, 16], "text_dim": 16}
ROWS = [{"description": "a red sphere", "seed": 1}, {"description": "a blue box and a green cylinder", "seed": 2}]


def make_policy(sampler: str, prediction: str = "", **kwargs) -> DiffusionPolicy:
    model = TileDiffusionModel({**CONFIG, "prediction": prediction or DiffusionPolicy.PREDICTION[sampler]})
    return DiffusionPolicy(model, sampler=sampler, steps=4, **kwargs)


SAMPLERS = [("ddim", "v_prediction"), ("ddim", "epsilon"), ("flow_sde", "velocity")]


@pytest.mark.parametrize("sampler,prediction", SAMPLERS)
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_recomputed_logprobs_equal_sampled(sampler, prediction, guidance):
    torch.manual_seed(0)
    policy = make_policy(sampler, prediction, guidance=guidance, timestep_fraction=0.5)
    policy.model.double()
    policy.model.eval()
    rollout = policy.rollout(ROWS, 2)
    assert rollout.logprobs.shape == rollout.mask.shape == (4, 4) and (rollout.mask.sum(1) == 2).all()
    assert rollout.outputs[0].shape == (3, 16, 16) and 0 <= rollout.outputs[0].min() <= rollout.outputs[0].max() <= 1
    with torch.no_grad():
        recomputed = policy.logprobs(rollout)
    masked = rollout.mask.bool()
    assert torch.allclose(recomputed[masked], rollout.logprobs[masked], atol=1e-6)
    assert (recomputed[~masked] == 0).all()


def test_greedy_sampling_starts_from_the_rows_seed():
    for sampler in ("ddim", "flow_sde"):
        policy = make_policy(sampler)
        policy.model.eval()
        outputs = [policy.rollout(ROWS[:1], 1, greedy=True) for _ in range(2)]  # noise from the row's seed
        assert torch.equal(outputs[0].outputs[0], outputs[1].outputs[0]) and (outputs[0].logprobs == 0).all()
        other = policy.rollout([{**ROWS[0], "seed": 5}], 1, greedy=True)
        assert not torch.equal(other.outputs[0], outputs[0].outputs[0])


def test_sampler_must_match_the_models_prediction():
    with pytest.raises(ValueError, match="needs a model predicting velocity"):
        DiffusionPolicy(TileDiffusionModel(CONFIG), sampler="flow_sde")


@pytest.mark.parametrize("sampler,prediction", SAMPLERS)
def test_sft_loss_falls_and_save_reloads(tmp_path, sampler, prediction):
    torch.manual_seed(0)
    policy = make_policy(sampler, prediction)
    rows = [{"description": r["description"], "tile": torch.rand(3, 16, 16) * 0.1 + 0.8} for r in ROWS] * 4
    optimizer = torch.optim.Adam(policy.model.parameters(), lr=2e-3)
    average = lambda: sum(policy.sft_loss(rows)[0].item() for _ in range(8)) / 8  # noqa: E731
    first = average()
    for _ in range(60):
        loss, _ = policy.sft_loss(rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert average() < 0.8 * first
    policy.save(tmp_path / "m")
    loaded = TileDiffusionModel.from_pretrained(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), policy.model.state_dict().values()))
    assert loaded.config["prediction"] == prediction


@pytest.mark.parametrize("sampler", ["ddim", "flow_sde"])
def test_closed_form_kl_is_zero_to_itself_and_matches_the_gaussian_formula(sampler):
    import copy

    from mmpost.algos.diffusion import gaussian_kl

    torch.manual_seed(0)
    policy = make_policy(sampler)
    policy.model.double().eval()
    reference = copy.deepcopy(policy)
    rollout = policy.rollout(ROWS, 2)
    logprobs, kl = policy.logprobs_and_kl(rollout, reference)
    assert kl.abs().max() == 0 and torch.allclose(logprobs, policy.logprobs(rollout))
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    _, kl = policy.logprobs_and_kl(rollout, reference)
    rows, steps = rollout.mask.nonzero(as_tuple=True)
    x = rollout.actions.latents[rows, steps]
    texts = [rollout.actions.texts[i] for i in rows.tolist()]
    with torch.no_grad():
        mean, std = policy._transition(x, steps, texts)
        ref_mean, _ = reference._transition(x, steps, texts)
    assert torch.allclose(kl[rows, steps], gaussian_kl(mean, ref_mean, std)) and (kl[rows, steps] > 0).all()
    kl.sum().backward()
    assert any(p.grad is not None for p in policy.model.parameters())
    assert all(p.grad is None for p in reference.model.parameters())


def test_v_prediction_converts_to_the_true_noise():
    """With a model that outputs the exact v target, the DDIM transition equals the one from the true noise."""
    from mmpost.algos.diffusion import ddim_transition

    policy = make_policy("ddim", "v_prediction")
    torch.manual_seed(0)
    x0, noise = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16)
    k = torch.tensor([3, 3])
    t = policy.timesteps[k]
    x_t = policy.scheduler.add_noise(x0, noise, t)
    v = policy.scheduler.get_velocity(x0, noise, t)
    policy._predict = lambda x, t, texts: v  # the exact v target in place of the network
    mean, std = policy._transition(x_t, k, ["", ""])
    a_t, a_prev = policy.alpha[k].view(-1, 1, 1, 1), policy.alpha_prev[k].view(-1, 1, 1, 1)
    expected_mean, expected_std = ddim_transition(noise, x_t, a_t, a_prev, policy.eta)
    assert torch.allclose(mean, expected_mean, atol=1e-5) and torch.allclose(std, expected_std)


def test_saved_unet_is_a_diffusers_directory_and_bare_unets_load(tmp_path):
    from diffusers import UNet2DConditionModel

    model = TileDiffusionModel(CONFIG)
    model.save_pretrained(tmp_path / "saved")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "saved" / "unet")  # plain diffusers can read it
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), model.unet.state_dict().values()))
    unet.save_pretrained(tmp_path / "bare")  # a user's diffusers UNet, without our word encoder
    loaded = TileDiffusionModel.from_pretrained(tmp_path / "bare")
    assert loaded.config["tile_size"] == 16 and loaded(torch.randn(1, 3, 16, 16), torch.tensor([5]), ["a"]).shape == (1, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TileDiffusionModel.from_pretrained(tmp_path)
