"""The command line: listing, training from flags and YAML, one-line errors, the demo."""

import pytest

from implicit_sparsity.cli import main
from implicit_sparsity.train import read_metrics


def test_models_lists_counts_and_filters(capsys):
    assert main(["models", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "4,649,664" in out and "[64, 128, 128, 256, 256, 512, 512]" in out
    assert "vgg19" in out
    assert main(["models", "--dataset", "fashion-mnist", "--width", "32-0.25x"]) == 0
    out = capsys.readouterr().out
    assert "[32, 32, 32, 64, 64, 128, 128]" in out and "takes a plain multiplier" in out
    assert main(["models", "--dataset", "fashion-mnist", "--width", "0.5"]) == 0
    assert "padded 28->32" in capsys.readouterr().out


def test_datasets_says_where_each_one_is(capsys, fashion_dir):
    assert main(["datasets", "--data-dir", str(fashion_dir)]) == 0
    out = capsys.readouterr().out
    assert f"found at {fashion_dir}" in out
    assert "cifar-10-python.tar.gz" in out  # how to get a missing one


def test_train_from_yaml_with_flag_overrides(tmp_path, fashion_dir, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: fashion-mnist\ndata_dir: {fashion_dir}\nwidth: '0.0625'\n"
                      "optimizer: sgd\nregularizer: wd\nlam: 5e-4\nepochs: [3]\n")
    out = tmp_path / "run"
    code = main(["train", "--config", str(config), "--epochs", "1", "1", "--lambda", "1e-3",
                 "--no-flip", "--optimizer-args", "{momentum: 0.5}", "--out", str(out)])
    assert code == 0
    assert "finished" in capsys.readouterr().out
    saved = (out / "config.yaml").read_text()
    assert "lam: 0.001" in saved and "flip: false" in saved and "momentum: 0.5" in saved
    assert len(read_metrics(out)) == 2
    # running the same command again says the run is finished and overwrites nothing
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["train", "--config", str(config), "--epochs", "1", "1", "--lambda", "1e-3",
                 "--no-flip", "--optimizer-args", "{momentum: 0.5}", "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == before
    # another config into the same folder is refused
    assert main(["train", "--config", str(config), "--epochs", "1", "1", "--lambda", "2e-3",
                 "--out", str(out)]) == 2
    assert "another config" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--optimizer", "lamb"], "valid optimizers: sgd, adam, amsgrad"),
    (["train", "--model", "resnet50"], "valid models: basicnet"),
    (["train", "--dataset", "svhn"], "valid data sets: fashion-mnist"),
    (["train", "--lambda", "2"], "lambda must be in [0, 1)"),
    (["train", "--batch-size", "0"], "batch_size must be >= 1"),
    (["train", "--config", "/no/such/file.yaml"], "cannot read config /no/such/file.yaml"),
    (["train", "--dataset", "cifar10", "--data-dir", "/no/such/dir"], "cifar10 not found"),
])
def test_bad_input_is_one_line_on_stderr(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_quick_demo_prints_the_layer_table(tmp_path, capsys):
    from conftest import write_fashion_mnist

    fashion_dir = write_fashion_mnist(tmp_path / "fashion", n_train=400, n_test=200)  # --quick's
    demo = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(demo), "--data-dir", str(fashion_dir)]) == 0
    out = capsys.readouterr().out
    assert "Adam + L2" in out and "SGD + L2" in out and "(116)" in out
    assert "pruned err" in out and "0, 0 changed" in out
    assert (demo / "quick" / "adam-l2" / "summary.json").is_file()
    assert (demo / "quick" / "sgd-l2" / "figures" / "universality.png").is_file()
    # a second demo reuses the finished runs
    assert main(["demo", "--quick", "--out", str(demo), "--data-dir", str(fashion_dir)]) == 0
    assert out.splitlines()[-1] == capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize("command", [[], ["train"], ["models"], ["datasets"], ["analyze"],
                                     ["prune"], ["simulate"], ["sweep"], ["report"],
                                     ["compare"], ["findings"], ["demo"]])
def test_every_help_works(command, capsys):
    with pytest.raises(SystemExit) as done:
        main(command + ["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: implicit-sparsity")
    if not command:  # the top-level help lists every command
        from implicit_sparsity.commands import COMMANDS

        assert all(c.NAME in out for c in COMMANDS)
