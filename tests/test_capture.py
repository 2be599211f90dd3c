"""The captured training step: when it applies, and that its bookkeeping (warm-up, static
inputs, the gradients a graph owns, the last partial batch, the check against eager mode)
leaves every number as eager mode computes it.

A CUDA graph needs a GPU; here a stand-in backend "replays" by re-running the recorded step
into the same gradient tensors, which is what a graph's replay does. The same checks on a
real graph are in test_gpu.py (run where a GPU is present)."""

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from implicit_sparsity.errors import ConfigError, RunStateError
from implicit_sparsity.models import build_model
from implicit_sparsity.optim import Regularizer, build_optimizer, param_groups, regularized_step
from implicit_sparsity.train import TrainConfig, train
from implicit_sparsity.train import capture as capture_module
from implicit_sparsity.train.capture import ForwardBackward, relative_difference, should_capture
from implicit_sparsity.train.packed import PackedModels


class ReplayBackend:
    """A CPU stand-in for a CUDA graph: replay re-runs the recorded step, writing the same
    gradient tensors afresh; `error` is added to one gradient to play a graph that differs."""

    def __init__(self, error: float = 0.0):
        self.error = error
        self.captures = 0
        self.replays = 0

    def warmup(self):
        return nullcontext()

    def capture(self, step, params):
        self.captures += 1

        def replay():
            self.replays += 1
            for p in params:
                if p.grad is not None:
                    p.grad.zero_()
            step()
            params[0].grad.add_(self.error)
        return replay


def batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
            for n in sizes]


def train_steps(backend, data, capture=True, insist=False):
    """Adam + L2 over `data` twice (two 'epochs' of 6 full batches and a partial one)."""
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.0625)
    optimizer = build_optimizer("adam", param_groups(model, 1e-3), {"betas": (0.9, 0.99)})
    regularizer = Regularizer("l2", 1e-3, model.parameters())

    def compute(x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    step = ForwardBackward(compute, list(model.parameters()), list(model.buffers()),
                           capture=capture, backend=backend, insist=insist)
    losses, grad_ids = [], []
    for _ in range(2):
        for x, y in data:
            loss, logits = step(x, y)
            assert logits.shape == (len(y), 10)
            regularized_step(optimizer, regularizer, 1.0)
            losses.append(loss.item())
            grad_ids.append([id(p.grad) for p in model.parameters()])
    return model, losses, grad_ids, step


def test_graphed_steps_compute_what_eager_steps_compute():
    data = batches([8] * 6 + [5])
    eager_model, eager_losses, _, eager_step = train_steps(None, data, capture=False)
    backend = ReplayBackend()
    model, losses, grad_ids, step = train_steps(backend, data)
    assert eager_step.status == "eager"
    assert step.status.startswith("CUDA graph (matches eager")
    assert backend.captures == 1
    # 14 steps: 3 warm-up, the captured one (checked, then replayed), 8 replays of full
    # batches, 2 partial batches run eagerly (one before the capture, one after)
    assert backend.replays == 1 + 8
    assert losses == eager_losses  # bit for bit
    for a, b in zip(model.state_dict().values(), eager_model.state_dict().values()):
        assert torch.equal(a, b)
    # from the capture on, the gradients live in the same tensors (the graph's), the
    # eager partial batch included
    assert all(ids == grad_ids[3] for ids in grad_ids[3:])


def test_a_graph_that_differs_is_dropped_and_eager_numbers_kept():
    data = batches([8] * 6 + [5])
    eager_model, eager_losses, _, _ = train_steps(None, data, capture=False)
    backend = ReplayBackend(error=1e-3)
    model, losses, _, step = train_steps(backend, data)
    assert step.status.startswith("eager (the CUDA graph differed from eager by")
    assert backend.replays == 1  # the checked step only
    assert losses == eager_losses
    for a, b in zip(model.state_dict().values(), eager_model.state_dict().values()):
        assert torch.equal(a, b)


def test_an_insisted_graph_that_differs_stops_the_run():
    with pytest.raises(RunStateError, match="cuda-graph: the CUDA graph differed from eager"):
        train_steps(ReplayBackend(error=1e-3), batches([8] * 6), insist=True)


class FailingBackend(ReplayBackend):
    def capture(self, step, params):
        raise RuntimeError("operation not permitted when stream is capturing\ndetails")


def test_a_graph_that_cannot_be_captured_leaves_the_run_eager():
    data = batches([8] * 6 + [5])
    eager_model, eager_losses, _, _ = train_steps(None, data, capture=False)
    model, losses, _, step = train_steps(FailingBackend(), data)
    assert step.status == ("eager (the CUDA graph could not be captured: operation not "
                           "permitted when stream is capturing)")
    assert losses == eager_losses
    for a, b in zip(model.state_dict().values(), eager_model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_graph_is_made_for_full_batches():
    # 4 steps an epoch: 3 warm-up steps, then the partial batch, which is not captured;
    # the capture comes with the next full batch
    backend = ReplayBackend()
    _, _, _, step = train_steps(backend, batches([8, 8, 8, 5]))
    assert step.static[0].shape[0] == 8
    assert backend.captures == 1 and backend.replays == 1 + 2


def test_the_check_measures_relative_differences():
    b = torch.tensor([2.0, -4.0])
    assert relative_difference(b.clone(), b) == 0.0
    assert relative_difference(torch.tensor([2.0, -4.004]), b) == pytest.approx(1e-3, rel=1e-4)
    assert relative_difference(None, None) == 0.0
    assert relative_difference(None, b) == float("inf")
    assert relative_difference(torch.tensor(3), torch.tensor(4)) == float("inf")


def test_capture_applies_on_one_gpu_process_without_dropout():
    cuda = torch.device("cuda")
    net = build_model("basicnet", in_channels=3, num_classes=10, width=0.0625)
    assert should_capture("auto", cuda, net) == (True, "CUDA graph (pending its check)")
    assert should_capture("auto", torch.device("cpu"), net) == (False, "eager (no CUDA device)")
    assert should_capture("auto", cuda, net, world=2) == (False, "eager (a distributed run)")
    assert should_capture("off", cuda, net)[0] is False
    vgg = build_model("vgg11", in_channels=3, num_classes=1000, width=0.0625, head="imagenet")
    assert should_capture("auto", cuda, vgg) == (False, "eager (dropout in the model)")
    with pytest.raises(ConfigError, match="no CUDA device"):
        should_capture("cuda-graph", torch.device("cpu"), net)


def test_step_capture_is_checked_before_any_work(fashion_dir, tmp_path):
    with pytest.raises(ConfigError, match="step_capture must be one of"):
        TrainConfig(step_capture="graphs").validate()
    config = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[1], device="cpu",
                         step_capture="cuda-graph")
    with pytest.raises(ConfigError, match="cuda-graph does not apply here: no CUDA device"):
        train(config, tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()


def test_training_loop_with_a_captured_step_matches_eager(fashion_dir, tmp_path, monkeypatch):
    base = dict(data_dir=str(fashion_dir), width="0.0625", epochs=[2, 1], batch_size=16,
                device="cpu", l1_gamma=1e-4)  # 120 images: 7 full batches + 8
    eager = train(TrainConfig(**base), tmp_path / "eager", verbose=False)
    backends = []

    def stand_in():
        backends.append(ReplayBackend())
        return backends[-1]

    monkeypatch.setattr(capture_module, "CudaGraphBackend", stand_in)
    monkeypatch.setattr("implicit_sparsity.train.loop.should_capture",
                        lambda *args: (True, "CUDA graph (pending its check)"))
    graphed = train(TrainConfig(**base), tmp_path / "graphed", verbose=False)
    assert backends and backends[0].replays > 0
    assert [m["training_step"] for m in graphed.metrics][0].startswith("CUDA graph (matches")
    for key in ("train_loss", "test_loss", "sparsity_gamma_total"):
        assert [m[key] for m in graphed.metrics] == [m[key] for m in eager.metrics]
    for a, b in zip(graphed.model.state_dict().values(), eager.model.state_dict().values()):
        assert torch.equal(a, b)


def test_packed_runs_with_a_captured_step_match_eager_packed_runs():
    configs = [TrainConfig(optimizer="adam", regularizer="l2", lam=1e-3, seed=0),
               TrainConfig(optimizer="sgd", regularizer="wd", lam=5e-3, seed=1)]
    data = [(x.view(2, -1, 1, 28, 28), y.view(2, -1)) for x, y in batches([12] * 5 + [6])]

    def run(backend):
        models = []
        for config in configs:
            torch.manual_seed(config.seed)
            models.append(build_model("basicnet", in_channels=1, num_classes=10, width=0.0625))
        packed = PackedModels(models, configs, capture=backend is not None)
        packed.forward_backward.backend = backend
        losses = [packed.step(x, y, [1.0, 1.0]).tolist() for x, y in data]
        return packed, losses

    eager, eager_losses = run(None)
    graphed, losses = run(ReplayBackend())
    assert graphed.forward_backward.status.startswith("CUDA graph (matches")
    assert losses == eager_losses
    for k in range(2):
        for a, b in zip(graphed.state_dict(k).values(), eager.state_dict(k).values()):
            assert torch.equal(a, b)


def test_a_compiled_step_is_checked_and_trains_like_eager(fashion_dir, tmp_path, monkeypatch):
    """step_capture compile: the first step runs both ways and the compiled one is kept when
    it matches; the partial last batch runs eagerly. aot_eager traces forward and backward
    as inductor does, without generating kernels (no C++ compiler, seconds not minutes):
    its numbers are eager's, so the runs agree exactly. Inductor is timed in
    benchmarks/train_throughput.py --compile."""
    monkeypatch.setattr(capture_module, "COMPILE_BACKEND", "aot_eager")
    base = dict(data_dir=str(fashion_dir), width="0.0625", epochs=[2], batch_size=16,
                device="cpu")  # 120 images: 7 full batches + 8
    eager = train(TrainConfig(**base), tmp_path / "eager", verbose=False)
    compiled = train(TrainConfig(**base, step_capture="compile"), tmp_path / "compiled",
                     verbose=False)
    assert compiled.metrics[0]["training_step"].startswith("torch.compile (matches eager")
    for key in ("train_loss", "test_loss"):
        assert [m[key] for m in compiled.metrics] == pytest.approx(
            [m[key] for m in eager.metrics], rel=1e-6)
    # a compiled step that differs stops a run that asked for it, before any epoch is saved
    monkeypatch.setattr(capture_module, "COMPILE_RTOL", -1.0)
    with pytest.raises(RunStateError, match="step_capture compile: the compiled step differed"):
        train(TrainConfig(**base, step_capture="compile"), tmp_path / "differs", verbose=False)
    assert not (tmp_path / "differs" / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match="compile does not apply to a model with dropout"):
        should_capture("compile", torch.device("cpu"), torch.nn.Dropout(), 1)
