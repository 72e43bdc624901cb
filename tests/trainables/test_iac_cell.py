"""The Implantable Adaptive Cell (IAC paper III-B) and its Stage II search (Algorithms 1-2)."""
from __future__ import annotations

import math

import pytest
import torch

from trainables.nets import iac_cell
from trainables.nets.iac_cell import (N_EDGES, OPS, PRIMITIVES, ArchParameters, DiscreteCell, Genotype, MixedOp,
                                      SearchCell, channel_shuffle, derive_genotype, node_slices, tan_rescale)

torch.set_num_threads(1)


# ---- tan rescaling (eqs. 6-10) ------------------------------------------------------------

def test_tan_rescale_below_half_is_the_softmax_of_tan():
    beta = torch.tensor([0.2, 0.3, 0.1, 0.25])
    psi = tan_rescale(beta)
    expected = torch.exp(torch.tan(beta)) / torch.exp(torch.tan(beta)).sum()  # eq. 6
    assert float(expected.max()) <= 0.5
    assert torch.allclose(psi, expected, atol=1e-6)  # eq. 7


def test_tan_rescale_caps_the_strongest_edge_at_half_and_shares_the_rest():
    beta = torch.tensor([1.2, 0.1, 0.4, -0.3])
    t = torch.tan(beta)
    hat = torch.softmax(t, 0)
    assert float(hat.max()) > 0.5
    psi = tan_rescale(beta)
    star = int(hat.argmax())
    assert float(psi[star]) == pytest.approx(0.5)  # eq. 8
    s_rest = float(hat.sum() - hat[star])  # eq. 9
    for i in range(4):
        if i != star:
            assert float(psi[i]) == pytest.approx(0.5 * float(hat[i]) / s_rest, rel=1e-5)  # eq. 10
    assert float(psi.sum()) == pytest.approx(1.0)
    # differentiable: gradients reach the non-max betas
    b = beta.clone().requires_grad_(True)
    (tan_rescale(b) * torch.arange(4.0)).sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_edge_weights_normalise_per_node_with_and_without_tan():
    for tan in (True, False):
        arch = ArchParameters(tan_beta=tan)
        with torch.no_grad():
            arch.betas.copy_(torch.linspace(-0.5, 1.3, N_EDGES))
        psi = arch.edge_weights().detach()
        for s in node_slices():
            assert float(psi[s].sum()) == pytest.approx(1.0, abs=1e-5)
        if tan:
            assert all(float(psi[s].max()) <= 0.5 + 1e-6 for s in node_slices())
        else:
            assert torch.allclose(psi[node_slices()[3]], torch.softmax(arch.betas[node_slices()[3]], 0))


def test_alpha_beta_start_at_ones_and_the_ops_table_is_the_papers():
    arch = ArchParameters()
    assert torch.equal(arch.alphas, torch.ones(14, 8)) and torch.equal(arch.betas, torch.ones(14))
    assert len(PRIMITIVES) == 8 and N_EDGES == 14 and sum(s.stop - s.start for s in node_slices()) == 14
    assert set(OPS) == {"zero", "identity", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
                        "dil_conv_3x3", "dil_conv_5x5"}


# ---- partial channels (eq. 3) --------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_ops_keep_shape(dims):
    x = torch.randn(2, 4, *([6] * dims))
    for name, make in OPS.items():
        assert make(4, dims, True)(x).shape == x.shape, name


def test_partial_channel_mixing_keeps_shape_and_passes_unmasked_channels_through():
    torch.manual_seed(0)
    c, k = 16, 4
    op = MixedOp(c, k, spatial_dims=2)
    x = torch.randn(3, c, 8, 8)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    out = op(x, w)
    assert out.shape == x.shape
    per = c // k
    # channel shuffle sends input channel g * per + j to output j * k + g
    for g in range(1, k):
        for j in range(per):
            assert torch.equal(out[:, j * k + g], x[:, g * per + j])
    # the masked group (g = 0) went through the mixture and changed
    mixed = torch.stack([out[:, j * k] for j in range(per)], 1)
    assert not torch.allclose(mixed, x[:, :per])
    # K = 1 is full DARTS: every channel is mixed and nothing is shuffled
    assert MixedOp(c, 1, 2)(x, w).shape == x.shape
    assert torch.equal(channel_shuffle(x, 1), x)


def test_mixed_op_rejects_a_width_not_divisible_by_k():
    with pytest.raises(ValueError, match="divisible"):
        MixedOp(10, 4, 2)


@pytest.mark.parametrize("dims", [2, 3])
def test_search_and_discrete_cells_return_the_encoder_shape(dims):
    arch = ArchParameters()
    enc, dec = torch.randn(2, 8, *([8] * dims)), torch.randn(2, 16, *([8] * dims))
    cell = SearchCell(8, 16, arch, k=4, spatial_dims=dims)
    out = cell(enc, dec)
    assert out.shape == enc.shape
    out.square().mean().backward()
    assert arch.alphas.grad is not None and arch.betas.grad is not None
    assert not any(p is arch.alphas for p in cell.parameters())  # the shared arch belongs to no level
    g = arch.genotype()
    assert DiscreteCell(g, 8, 16, spatial_dims=dims)(enc, dec).shape == enc.shape


# ---- genotypes and derivation (III-B.3) ----------------------------------------------------

def test_derive_genotype_on_hand_set_alpha_and_beta():
    ops = {p: i for i, p in enumerate(PRIMITIVES)}
    alpha = torch.zeros(N_EDGES, len(PRIMITIVES))
    beta = torch.zeros(N_EDGES)
    # zero is the strongest op everywhere: it must never be picked
    alpha[:, ops["zero"]] = 5.0
    # node 0 (edges 0, 1): sep_conv_3x3 on the encoder, max pool on the decoder
    alpha[0, ops["max_pool_3x3"]] = 2.0
    alpha[1, ops["sep_conv_3x3"]] = 3.0
    # node 1 (edges 2, 3, 4): node 0 via dil_conv_5x5 and the encoder via identity; the decoder
    # edge has a strong op but a weak edge weight
    alpha[2, ops["sep_conv_5x5"]] = 4.0
    alpha[3, ops["identity"]] = 3.2
    alpha[4, ops["dil_conv_5x5"]] = 3.0
    beta[2], beta[3], beta[4] = -3.0, 1.0, 1.0
    # node 2 (edges 5-8) and node 3 (edges 9-13): avg pool on inputs 3 and 0; dil_conv_3x3 on 4 and 1
    alpha[8, ops["avg_pool_3x3"]] = 3.0
    alpha[5, ops["avg_pool_3x3"]] = 2.5
    alpha[13, ops["dil_conv_3x3"]] = 3.0
    alpha[10, ops["dil_conv_3x3"]] = 2.5
    arch = ArchParameters(tan_beta=False)
    with torch.no_grad():
        arch.alphas.copy_(alpha)
        arch.betas.copy_(beta)
    g = arch.genotype()
    assert g.edges == (("sep_conv_3x3", 1), ("max_pool_3x3", 0),
                       ("identity", 1), ("dil_conv_5x5", 2),
                       ("avg_pool_3x3", 3), ("avg_pool_3x3", 0),
                       ("dil_conv_3x3", 4), ("dil_conv_3x3", 1))
    assert g == derive_genotype(arch.op_weights(), arch.edge_weights())
    assert Genotype.from_dict(g.to_dict()) == g and hash(g) == hash(Genotype.from_dict(g.to_dict()))
    assert "sep_conv_3x3(encoder)" in str(g)


def test_genotype_is_immutable_and_checked():
    g = ArchParameters().genotype()
    with pytest.raises(Exception):
        g.edges = ()
    with pytest.raises(ValueError, match="zero"):
        Genotype(edges=(("zero", 0),) * 8)
    with pytest.raises(ValueError, match="inputs 0..1"):
        Genotype(edges=(("identity", 2),) + (("identity", 0),) * 7)
    with pytest.raises(ValueError, match="two per node"):
        Genotype(edges=(("identity", 0),))


def test_cosine_power_annealing_runs_from_max_to_min():
    from trainables.darts_trial import cosine_power_annealing

    lrs = [cosine_power_annealing(e, 10, 0.01, 0.0, 10.0) for e in range(1, 12)]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # power annealing drops faster than plain cosine in the middle
    assert lrs[5] < 0.01 * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert iac_cell.cell_width(10, 4) == 12


# ---- Stage II: the bilevel search on a frozen U-Net (Algorithms 1-2) ----------------------

@pytest.fixture(scope="module")
def tiny_seg():
    from orchestrator.segmentation_data import load_segmentation

    return load_segmentation("synthetic", 32, 2, max_cases=4, seed=0)


def _tiny_unet():
    from trainables.nets.unets import build_unet

    torch.manual_seed(0)
    return build_unet("unet", 2, 1, 1, features=(4, 4, 8, 8, 8, 4))


def _rows(images) -> set:
    return {hash(r.numpy().tobytes()) for r in images.reshape(len(images), -1).float()}


def test_bilevel_step_moves_alpha_beta_on_val_search_and_cell_weights_on_train_search(tiny_seg):
    from trainables.darts_trial import BilevelStep, cell_parameters, run_search

    val_rows = _rows(torch.from_numpy(tiny_seg.images["val_search"]))
    train_rows = _rows(torch.from_numpy(tiny_seg.images["train_search"]))
    assert not val_rows & train_rows
    log = []

    class Spy(BilevelStep):
        def _snap(self, model):
            return ([p.detach().clone() for p in self.arch.parameters()],
                    [p.detach().clone() for p in cell_parameters(model)])

        def _moved(self, before, model):
            after = self._snap(model)
            return [any(not torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(before, after)]

        def arch_step(self, model, x, y, ctx):
            before = self._snap(model)
            loss = super().arch_step(model, x, y, ctx)
            log.append(("arch", ctx.epoch, _rows(x.cpu()) <= val_rows, *self._moved(before, model)))
            return loss

        def weight_step(self, model, x, y, ctx):
            before = self._snap(model)
            loss = super().weight_step(model, x, y, ctx)
            log.append(("weights", ctx.epoch, _rows(x.cpu()) <= train_rows, *self._moved(before, model)))
            return loss

    unet = _tiny_unet()
    run_search(unet, tiny_seg, {"epochs": 2, "warmup": 1, "batch_size": 16, "k": 2}, step_cls=Spy)
    arch_log = [e for e in log if e[0] == "arch"]
    weight_log = [e for e in log if e[0] == "weights"]
    n_batches = math.ceil(len(tiny_seg.images["train_search"]) / 16)
    assert len(weight_log) == 2 * n_batches and len(arch_log) == n_batches  # no arch step in the warm-up
    assert all(epoch == 2 for _, epoch, *_ in arch_log)
    # (kind, epoch, batch from the right split, alpha/beta moved, cell weights moved)
    assert all(from_val and arch_moved and not cells_moved for _, _, from_val, arch_moved, cells_moved in arch_log)
    assert all(from_train and cells_moved and not arch_moved
               for _, _, from_train, arch_moved, cells_moved in weight_log)


def test_frozen_unet_is_bit_identical_after_search_and_the_search_resumes(tiny_seg):
    from trainables.darts_trial import run_search

    unet = _tiny_unet()
    before = {k: v.clone() for k, v in unet.unet_state_dict().items()}
    states = []
    result, step, _ = run_search(unet, tiny_seg, {"epochs": 2, "warmup": 0, "batch_size": 16, "k": 2},
                                 save_state=lambda state, row: states.append((state, row)))
    after = unet.unet_state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert result.epochs_run == 2 and not torch.equal(step.arch.alphas.detach(), torch.ones(14, 8))
    row = states[-1][1]
    assert 0.0 <= row["val_dice"] <= 1.0 and Genotype.from_dict(__import__("json").loads(row["genotype"]))
    # resume from epoch 1's state: epoch 2 again gives the same alpha/beta
    unet2 = _tiny_unet()
    _, step2, _ = run_search(unet2, tiny_seg, {"epochs": 2, "warmup": 0, "batch_size": 16, "k": 2},
                             resume_state=states[0][0])
    assert torch.allclose(step2.arch.alphas, step.arch.alphas, atol=1e-6)
    assert torch.allclose(step2.arch.betas, step.arch.betas, atol=1e-6)


def test_mixed_op_skips_the_zero_op_without_changing_its_value_or_gradients():
    from trainables.nets.iac_cell import MixedOp, channel_shuffle

    torch.manual_seed(0)
    op = MixedOp(8, 4, 2)
    x = torch.randn(3, 8, 6, 6, requires_grad=True)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0).requires_grad_()
    out = op(x, w)
    part, rest = x[:, :2], x[:, 2:]
    reference = channel_shuffle(torch.cat([sum(wi * o(part) for wi, o in zip(w, op.ops)), rest], 1), 4)
    assert torch.allclose(out, reference)
    g_out = torch.autograd.grad(out.square().sum(), (x, w))
    g_ref = torch.autograd.grad(reference.square().sum(), (x, w))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_out, g_ref))
    assert g_out[1][PRIMITIVES.index("zero")] == 0
