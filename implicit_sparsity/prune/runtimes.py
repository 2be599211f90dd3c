"""The slim model where users run it: exported to ONNX (run by ONNX Runtime) and to
OpenVINO's IR, each file proven to compute what the PyTorch model does, and timed there.

Exports: ONNX through `torch.onnx.export(dynamo=True)`, batch size dynamic, BatchNorm folded
into the convolutions (the exporter folds eval-mode BatchNorm). OpenVINO's IR converted
from that ONNX file (`openvino.convert_model`), weights kept in float32
(`compress_to_fp16=False`; OpenVINO's default would halve them), and compiled with
`INFERENCE_PRECISION_HINT=f32` (a CPU with bf16 or AMX units would otherwise run it in
bf16).

The check, on the check batches, is derived from float32 arithmetic: the reference is the
PyTorch model in float64; PyTorch's own float32 error against it, e32 = max |torch32 -
torch64| (at least eps32 * max |logit|), measures what rounding does to this model on this
data; another float32 implementation sums in other orders (and with other kernels:
Winograd, fused conv + add), so it may err by more, but not by orders of magnitude. A
runtime passes when max |runtime - torch64| <= RUNTIME_ERROR_FACTOR * e32 and no
prediction differs from PyTorch's where the reference's top two logits are further apart
than that bound (closer than that, rounding decides, in PyTorch as well). A file that fails
is deleted and the reason said in one line.

Latency: every runtime is timed with the one definition of `prune.cost` (warm-up,
interleaved rounds of the original and the slim model, medians, IQRs, within-noise
verdict), the thread count fixed and stated (PyTorch's `num_threads`, ONNX Runtime's
`intra_op_num_threads`, OpenVINO's `INFERENCE_NUM_THREADS`).
"""

from __future__ import annotations

import copy
import importlib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from implicit_sparsity.errors import ConfigError, ImplicitSparsityError, first_line
from implicit_sparsity.measure.features import trace_features
from implicit_sparsity.prune.cost import LATENCY_ROUNDS, interleaved_times, latency_row
from implicit_sparsity.prune.surgery import fold_batchnorm

#: What `--runtimes` may name: PyTorch eager, PyTorch with BatchNorm folded, the two others.
RUNTIMES = ("torch", "torch-folded", "onnxruntime", "openvino")
#: What `--export` may name, and the runtime each file is checked in.
EXPORTS = {"onnx": "onnxruntime", "openvino": "openvino"}
#: The packages each runtime needs (the `deploy` extra installs them all).
PACKAGES = {"onnxruntime": ("onnx", "onnxscript", "onnxruntime"),
            "openvino": ("onnx", "onnxscript", "openvino")}
#: How many times PyTorch's own float32 error a runtime may err by (see the module's text).
RUNTIME_ERROR_FACTOR = 16
FLOAT32_EPS = torch.finfo(torch.float32).eps
#: File names in a slim folder: the original's files beside the slim model's, to compare.
FILES = {"onnx": ("model.onnx", "slim.onnx"), "openvino": ("model.xml", "slim.xml")}


class ExportError(ImplicitSparsityError):
    """An export the runtime rejects, or whose outputs differ beyond the tolerance."""


def parse_names(text: str | None, valid, flag: str) -> tuple[str, ...]:
    """A comma-separated list of names, each one of `valid`."""
    if not text:
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"{flag}: unknown {unknown[0]!r}; valid: {', '.join(valid)}")
    return names


def require_packages(runtime: str, flag: str) -> None:
    """One line naming what to install when a runtime's packages are missing."""
    for package in PACKAGES.get(runtime, ()):
        try:
            importlib.import_module(package)
        except ImportError:
            raise ConfigError(f"{flag} {runtime} needs the package {package} (pip install "
                              f"'implicit-sparsity[deploy]')") from None


def folded_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with each BatchNorm after a conv folded into it (eval statistics)."""
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        fold_batchnorm(folded, trace_features(folded))
    return folded


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write `model` (eval mode) as ONNX with a dynamic batch size; one line if it fails."""
    model = model.eval()
    example = example[:2].expand(2, *example.shape[1:]).contiguous()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
            program.save(str(path))
    except Exception as error:  # the exporter raises many kinds
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export failed ({type(error).__name__}: "
                          f"{first_line(error)})") from None
    return path


def onnxruntime_runner(path: Path, threads: int):
    """A callable running the ONNX file in ONNX Runtime on CPU with `threads` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types
        raise ExportError(f"ONNX Runtime rejects {path.name} ({first_line(error)})") from None
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return run


def export_openvino(onnx_path: Path, path: Path) -> Path:
    """Convert the ONNX file to OpenVINO's IR (`path`: the .xml, its .bin beside it)."""
    import openvino

    try:
        model = openvino.convert_model(str(onnx_path))
        openvino.save_model(model, str(path), compress_to_fp16=False)
    except Exception as error:  # openvino's own exception types
        path.unlink(missing_ok=True)
        path.with_suffix(".bin").unlink(missing_ok=True)
        raise ExportError(f"OpenVINO conversion failed ({first_line(error)})") from None
    return path


def openvino_runner(path: Path, threads: int):
    """A callable running the IR on OpenVINO's CPU plugin, float32, `threads` threads."""
    import openvino

    try:
        compiled = openvino.Core().compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS":
                               threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    except Exception as error:  # openvino's own exception types
        raise ExportError(f"OpenVINO rejects {path.name} ({first_line(error)})") from None
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer({0: x.numpy()})[0].copy())

    return run


@dataclass
class RuntimeCheck:
    runtime: str
    samples: int
    max_abs_diff: float        # max |runtime - torch float64|
    torch_float32_diff: float  # max |torch float32 - torch float64|: e32
    tolerance: float           # RUNTIME_ERROR_FACTOR * e32
    changed_predictions: int   # against PyTorch's, where the reference's margin exceeds it

    @property
    def holds(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.changed_predictions == 0

    def describe(self) -> str:
        return (f"{self.runtime}: max |delta logits| {self.max_abs_diff:.2e} against float64 "
                f"(PyTorch float32: {self.torch_float32_diff:.2e}, tolerance "
                f"{self.tolerance:.2e}), {self.changed_predictions} of {self.samples} "
                f"predictions changed")

    def to_dict(self) -> dict:
        return {**asdict(self), "holds": self.holds}


@torch.no_grad()
def check_runtime(runtime: str, run, model: nn.Module, batches: list[torch.Tensor]
                  ) -> RuntimeCheck:
    """Compare `run` (a runtime's callable) with `model` on `batches` (see the module)."""
    model = model.eval()
    reference = copy.deepcopy(model).double()
    worst = torch_err = 0.0
    outputs = []
    for x in batches:
        x = x.detach().cpu().float().contiguous()
        exact = reference(x.double())
        ours, theirs = model(x).double(), run(x).double()
        torch_err = max(torch_err, (ours - exact).abs().max().item(),
                        FLOAT32_EPS * exact.abs().max().item())
        worst = max(worst, (theirs - exact).abs().max().item())
        outputs.append((exact, ours, theirs))
    tolerance = RUNTIME_ERROR_FACTOR * torch_err
    changed = samples = 0
    for exact, ours, theirs in outputs:
        samples += len(exact)
        top = exact.topk(2, dim=1).values if exact.shape[1] > 1 else None
        decided = (top[:, 0] - top[:, 1] > tolerance) if top is not None else \
            torch.ones(len(exact), dtype=torch.bool)
        changed += int(((ours.argmax(1) != theirs.argmax(1)) & decided).sum())
    return RuntimeCheck(runtime, samples, worst, torch_err, tolerance, changed)


def write_export(kind: str, model: nn.Module, example: torch.Tensor, path: Path,
                 check_batches: list[torch.Tensor], threads: int,
                 onnx_path: Path | None = None) -> RuntimeCheck:
    """Export `model` as `kind` to `path`, read it back in its runtime and check it there;
    a file that fails the check is deleted (ExportError, one line)."""
    if kind == "onnx":
        export_onnx(model, example, path)
        run = onnxruntime_runner(path, threads)
    else:
        if onnx_path is None:
            raise ExportError("an OpenVINO export is converted from the ONNX file")
        export_openvino(onnx_path, path)
        run = openvino_runner(path, threads)
    check = check_runtime(EXPORTS[kind], run, model, check_batches)
    if not check.holds:
        for file in (path, path.with_suffix(".bin")):
            if kind == "openvino" or file == path:
                file.unlink(missing_ok=True)
        raise ExportError(f"{path.name} does not compute what the PyTorch model does: "
                          f"{check.describe()}; the file is deleted")
    return check


def runtime_latency(runners: dict[str, tuple], example: torch.Tensor,
                    batch_sizes=(1, 64), threads: int | None = None,
                    min_run_time: float = 0.5, rounds: int = LATENCY_ROUNDS) -> list[dict]:
    """Latency of the original and the slim model in each runtime (`runners`: runtime ->
    (original, slim) callables), one `prune.cost` latency row per runtime and batch size,
    with the runtime named. Runtimes are timed one after the other; within each, the two
    models alternate, round by round."""
    threads = threads or torch.get_num_threads()
    rows = []
    for batch in batch_sizes:
        x = example[:1].expand(batch, *example.shape[1:]).contiguous()
        for runtime, (before, after) in runners.items():
            first, second = interleaved_times([before, after], x, threads, min_run_time,
                                              rounds)
            rows.append({"runtime": runtime, **latency_row(first, second, batch,
                                                           str(x.device), threads)})
    return rows


def runtime_table(rows: list[dict], mac_reduction: float | None = None) -> str:
    """The runtime latency rows as a table: original and slim medians with IQRs, the
    speed-up with its IQR, and (given the MAC reduction) speed-up / MAC reduction."""
    head = (f"{'runtime':14s}{'batch':>6s}{'original ms (IQR)':>20s}{'slim ms (IQR)':>18s}"
            f"{'speed-up (IQR)':>20s}" + (f"{'/ MACs':>8s}" if mac_reduction else ""))
    lines = [head]
    for r in rows:
        speed = f"{r['speedup']:.2f}x ({r['speedup_q1']:.2f}-{r['speedup_q3']:.2f})"
        lines.append(f"{r['runtime']:14s}{r['batch']:>6d}"
                     f"{r['before_ms']:>10.2f} ({r['before_iqr_ms']:.2f})".ljust(40)
                     + f"{r['after_ms']:>10.2f} ({r['after_iqr_ms']:.2f})".rjust(18)
                     + f"{speed + ('~' if r['within_noise'] else ' '):>20s}"
                     + (f"{r['speedup'] / mac_reduction:>8.2f}" if mac_reduction else ""))
    threads = rows[0]["threads"] if rows else torch.get_num_threads()
    return "\n".join(lines) + (f"\n{threads} threads, {rows[0]['rounds'] if rows else 0} "
                               "interleaved rounds; ~: within noise")


#: Images of the check data on which each exported file is checked.
CHECK_SAMPLES = 256


@dataclass
class Deployed:
    """What a deployment wrote: file names, each file's check, the runtime latency rows,
    and the first failure (its file deleted, the rest written), if any."""

    files: list[str]
    checks: dict[str, dict]
    latency: list[dict]
    failed: str | None = None


@dataclass
class DeploymentPlan:
    """The exports and the runtimes to time, as `prune --export / --runtimes` ask; the
    packages they need are checked when the plan is made, before any work."""

    exports: tuple[str, ...]   # file formats to write (onnx, openvino)
    timed: tuple[str, ...]     # runtimes to time

    @classmethod
    def from_flags(cls, export: str | None, runtimes: str | None) -> "DeploymentPlan":
        exports = parse_names(export, tuple(EXPORTS), "--export")
        timed = parse_names(runtimes, RUNTIMES, "--runtimes")
        for kind in exports:
            require_packages(EXPORTS[kind], "--export")
        for runtime in timed:
            require_packages(runtime, "--runtimes")
        return cls(exports, timed)

    @property
    def formats(self) -> tuple[str, ...]:
        """The files to write: those asked for, those the timed runtimes run, and ONNX
        under OpenVINO's (its IR is converted from the ONNX file)."""
        wanted = set(self.exports) | {k for k, rt in EXPORTS.items() if rt in self.timed}
        if "openvino" in wanted:
            wanted.add("onnx")
        return tuple(k for k in EXPORTS if k in wanted)

    def write_exports(self, model: nn.Module, example: torch.Tensor, check_data,
                      folder: Path, threads: int | None, original: bool = True,
                      original_model: nn.Module | None = None) -> Deployed:
        """Each format of the slim `model` (and of `original_model`) into `folder`, checked
        in its runtime; stops at the first failure, whose file is deleted."""
        threads = threads or torch.get_num_threads()
        checks = _check_inputs(check_data)
        example = example.detach().cpu()
        done = Deployed([], {}, [])
        pairs = [("slim", model)] + ([("model", original_model)] if original else [])
        for kind in self.formats:
            for role, net in pairs:
                name = FILES[kind][1] if role == "slim" else FILES[kind][0]
                onnx = folder / (FILES["onnx"][1] if role == "slim" else FILES["onnx"][0])
                try:
                    check = write_export(kind, _on_cpu(net), example, folder / name, checks,
                                         threads, onnx_path=onnx)
                except ExportError as error:
                    done.failed = f"{name}: {error}"
                    return done
                done.files.append(name)
                done.checks[name] = check.to_dict()
        return done

    def write(self, original: nn.Module, result, example: torch.Tensor, check_data,
              folder: Path, threads: int | None) -> Deployed:
        """The exports, then the latency of original and slim in each timed runtime."""
        if not self.formats and not self.timed:
            return Deployed([], {}, [])
        done = self.write_exports(result.model, example, check_data, folder, threads,
                                  original_model=original)
        if self.timed:
            runners = self.runners(_on_cpu(original), _on_cpu(result.model), folder,
                                   threads or torch.get_num_threads(), done)
            done.latency = runtime_latency(runners, example.detach().cpu(), threads=threads)
            print(runtime_table(done.latency, result.mac_reduction))
        return done

    def runners(self, original: nn.Module, slim: nn.Module, folder: Path, threads: int,
                done: Deployed) -> dict[str, tuple]:
        """(original, slim) callables per timed runtime whose files were written."""
        runners = {}
        for runtime in self.timed:
            if runtime == "torch":
                runners[runtime] = (original, slim)
            elif runtime == "torch-folded":
                runners[runtime] = (folded_copy(original), folded_copy(slim))
            else:
                kind = next(k for k, rt in EXPORTS.items() if rt == runtime)
                names = FILES[kind]
                if not all(name in done.files for name in names):
                    continue  # its export failed: said in done.failed
                make = onnxruntime_runner if kind == "onnx" else openvino_runner
                runners[runtime] = tuple(make(folder / name, threads) for name in names)
        return runners


def _check_inputs(check_data) -> list[torch.Tensor]:
    """The first CHECK_SAMPLES images of the check data (batches, or (images, labels))."""
    taken, count = [], 0
    for batch in check_data:
        x = batch if torch.is_tensor(batch) else batch[0]
        taken.append(x[:CHECK_SAMPLES - count].detach().cpu())
        count += len(taken[-1])
        if count >= CHECK_SAMPLES:
            break
    return taken


def _on_cpu(model: nn.Module) -> nn.Module:
    """The model itself when on the CPU, else a CPU copy (exports and runtimes run there)."""
    devices = {p.device.type for p in model.parameters()}
    return model if devices <= {"cpu"} else copy.deepcopy(model).cpu()
