"""A run's work dir (no silent overwrite or restart, Ctrl-C, stale temporaries, metrics on resume), clean
`error:` lines for bad input, the command line, and the thread choice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from own_coco import DATA_OVERRIDES, make_own_coco
from standin import build_standin

from detection import test, train
from detection.engine.checkpoint import load_checkpoint
from detection.engine.threads import affinity_cpus, busy_cores, choose_threads
from detection.engine.train import Trainer
from detection.engine.work_dir import truncate_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "standin_config.py")
REPO = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    return make_own_coco(str(tmp_path_factory.mktemp("own_coco")))


def _train(work_dir, data_root, *extra):
    argv = ["--config", CONFIG, "--data-root", data_root, "--work-dir", str(work_dir), "--no-progress", *extra]
    return train.main(argv, model_builder=build_standin)


@pytest.fixture()
def sigint_handler():
    """Install a SIGINT handler for the test (the process may have been started with SIGINT ignored, as by
    `cmd &` from a script) and put the inherited one back afterwards."""
    inherited = signal.getsignal(signal.SIGINT)

    def install(handler):
        signal.signal(signal.SIGINT, handler)
        return handler

    yield install
    signal.signal(signal.SIGINT, inherited)


def _interrupt_at(monkeypatch, iteration):
    """Send this process a SIGINT at the start of training step `iteration` + 1."""
    step = Trainer._step

    def interrupted(self, *args):
        if self.iteration == iteration:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_step", interrupted)
    return step


def _records(work_dir):
    return [json.loads(line) for line in open(os.path.join(work_dir, "metrics.jsonl"))]


def test_a_finished_run_is_not_overwritten_without_a_flag(tmp_path, data_root, capsys):
    assert _train(tmp_path, data_root, "solver.epochs=1") == 0
    latest = tmp_path / "latest.pth"
    stamp, log = os.path.getmtime(latest), open(tmp_path / "train.log").read()
    assert _train(tmp_path, data_root, "solver.epochs=1") == 2
    err = capsys.readouterr().err
    assert f"error: work dir {tmp_path} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert os.path.getmtime(latest) == stamp and open(tmp_path / "train.log").read() == log
    assert _train(tmp_path, data_root, "solver.epochs=1", "--overwrite") == 0
    assert [r["step"] for r in _records(tmp_path) if r["type"] == "train"] == [4, 8]  # the old run's are gone
    assert open(tmp_path / "train.log").read().count("config standin_tiny:") == 1
    assert _train(tmp_path, data_root, "--resume", "--overwrite") == 2


def test_resume_without_a_checkpoint_is_refused(tmp_path, data_root, capsys):
    assert _train(tmp_path / "typo", data_root, "--resume") == 2
    err = capsys.readouterr().err
    assert f"error: --resume: no checkpoint {tmp_path / 'typo' / 'latest.pth'} (it holds no run)" in err
    assert not os.path.exists(tmp_path / "typo" / "train.log")


def test_ctrl_c_saves_where_the_run_stands_and_resume_matches(tmp_path, data_root, monkeypatch, capsys,
                                                              sigint_handler):
    # 2 epochs of 8 steps. Ctrl-C arrives during iteration 11 (epoch 2, batch 3): the step finishes, latest.pth is
    # written after it, the exit status is 130; the resumed run ends with the uninterrupted run's weights.
    sigint_handler(signal.default_int_handler)  # Python's own, whatever this process inherited
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(full, data_root) == 0
    step = _interrupt_at(monkeypatch, 10)
    capsys.readouterr()
    assert _train(part, data_root) == 130
    err = capsys.readouterr().err
    assert "interrupted: stopped at iteration 11 (epoch 2, batch 3 of 8)" in err
    assert "to continue: python -m detection.train --config" in err and err.rstrip().endswith("--resume")
    state = load_checkpoint(str(part / "latest.pth"))
    assert (state["epoch"], state["epoch_step"], state["iteration"]) == (1, 3, 11)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is removed again

    monkeypatch.setattr(Trainer, "_step", step)
    (part / ".latest.pth.tmp999999999").write_bytes(b"left by a killed save")
    with open(part / "metrics.jsonl", "a") as f:  # a record after the checkpoint, as a kill could leave
        f.write(json.dumps({"type": "train", "step": 12, "loss": 1.0}) + "\n")
    assert _train(part, data_root, "--resume") == 0
    assert not os.path.exists(part / ".latest.pth.tmp999999999")
    assert "removed temporary files left by an interrupted save: .latest.pth.tmp999999999" in open(
        part / "train.log").read()
    full_state, part_state = load_checkpoint(str(full / "latest.pth")), load_checkpoint(str(part / "latest.pth"))
    for name, value in full_state["model"].items():
        torch.testing.assert_close(part_state["model"][name], value, atol=1e-6, rtol=0)
    steps = [r["step"] for r in _records(part) if r["type"] == "train"]
    assert steps == [r["step"] for r in _records(full) if r["type"] == "train"] == [4, 8, 12, 16]


def test_ctrl_c_saves_when_the_run_was_started_with_sigint_ignored(tmp_path, data_root, monkeypatch, capsys,
                                                                   sigint_handler):
    """`cmd &` from a script starts a process with SIGINT ignored; the training loop installs its own handler all
    the same (a SIGINT sent to the run saves it) and puts the ignoring one back afterwards."""
    sigint_handler(signal.SIG_IGN)
    _interrupt_at(monkeypatch, 2)
    assert _train(tmp_path, data_root) == 130
    assert "interrupted: stopped at iteration 3 (epoch 1, batch 3 of 8)" in capsys.readouterr().err
    assert load_checkpoint(str(tmp_path / "latest.pth"))["iteration"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_truncate_metrics_keeps_records_up_to_the_resume_point(tmp_path):
    lines = [json.dumps({"type": "train", "step": s}) for s in (2, 4, 6, 8)] + ['{"type": "tra']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert truncate_metrics(str(tmp_path), 5) == 3
    assert [r["step"] for r in _records(tmp_path)] == [2, 4]
    assert truncate_metrics(str(tmp_path), 5) == 0


def _broken_files(tmp_path, data_root):
    """A finished run (epoch_1, epoch_2, latest) whose latest.pth is truncated, and a garbage file."""
    run = tmp_path / "run"
    assert _train(run, data_root) == 0
    data = (run / "latest.pth").read_bytes()
    (run / "latest.pth").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.pth").write_text("12 not a checkpoint\n")
    return run


def test_bad_inputs_give_one_error_line(tmp_path, data_root, own_root, capsys):
    run = _broken_files(tmp_path, data_root)
    (tmp_path / "bad.json").write_text('{"images": [], "annotations": [,]}')
    (tmp_path / "nocats.json").write_text('{"images": [], "annotations": []}')
    checkpoint = ["--checkpoint", str(run / "epoch_2.pth")]
    cases = [
        (train, ["--config", "no_such_config"], "config 'no_such_config' not found; available:"),
        (train, ["--config", CONFIG, "--data-root", own_root, *DATA_OVERRIDES,
                 f"data.val_ann={tmp_path / 'bad.json'}"], f"annotation file {tmp_path / 'bad.json'} is not valid"),
        (train, ["--config", CONFIG, "--data-root", own_root, *DATA_OVERRIDES,
                 f"data.val_ann={tmp_path / 'nocats.json'}"], "nocats.json has no categories"),
        (train, ["--config", CONFIG, "--data-root", str(tmp_path / "nowhere"), *DATA_OVERRIDES],
         f"data root not found: {tmp_path / 'nowhere'}"),
        (train, ["--config", CONFIG, "data.dataset=voc"], "data.dataset: expected one of ('coco', 'shapes')"),
        (test, ["--config", CONFIG, "--checkpoint", str(run / "latest.pth")],
         f"checkpoint {run / 'latest.pth'} is truncated (an interrupted save or copy); the newest intact "
         f"checkpoint beside it is {run / 'epoch_2.pth'}"),
        (test, ["--config", CONFIG, "--checkpoint", str(tmp_path / "garbage.pth")],
         f"checkpoint {tmp_path / 'garbage.pth'} is not a readable checkpoint"),
        (test, ["--config", CONFIG, *checkpoint, "model.width=16"],
         "does not fit the model of config 'standin_tiny' (written by config 'standin_tiny')"),
        (test, ["--config", CONFIG, *checkpoint, "--out", str(tmp_path / "no" / "r.json")],
         f"--out {tmp_path / 'no' / 'r.json'}: the folder {tmp_path / 'no'} does not exist"),
        (train, ["--config", "tiny_test", "model.kind=yolo"], "model config: kind: expected one of"),
        (train, ["--config", "tiny_test", "model.backbone.name=resnest7"], "backbone.name: resnest_cuda has no"),
        (train, ["--device", "gpu", "--config", CONFIG], "--device 'gpu': not a device name"),
    ]
    if not torch.cuda.is_available():
        cases.append((train, ["--device", "cuda", "--config", CONFIG], "--device cuda: CUDA is not available"))
    for module, argv, expected in cases:
        if module is train:
            argv = [*argv, "--work-dir", str(tmp_path / "w"), "--no-progress"]
            if "--data-root" not in argv:
                argv += ["--data-root", data_root]
        else:
            argv = [*argv, "--data-root", data_root]
        builder = None if "tiny_test" in argv else build_standin
        assert module.main(argv, model_builder=builder) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") or "\nerror: " in err, (argv, err)
        assert expected in err and "Traceback" not in err, (argv, err)
        assert not os.path.exists(tmp_path / "w" / "latest.pth")


def test_overrides_may_stand_anywhere_among_the_flags():
    args = train.parse_args(["solver.epochs=3", "--work-dir", "X", "solver.lr=0.01", "--resume", "data.min_size=0"])
    assert args.work_dir == "X" and args.resume and args.overrides == ["solver.epochs=3", "solver.lr=0.01",
                                                                       "data.min_size=0"]


def test_list_and_print_config(capsys):
    assert train.main(["--list-configs"]) == 0
    listing = capsys.readouterr().out
    module, name = "mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco", "mask_rcnn_s50_fpn_syncbn-backbone+head"
    assert f"{module}  ({name}_mstrain_1x_coco)" in listing.splitlines()
    assert test.main(["--config", "tiny_cascade_test", "--print-config", "solver.lr=0.5", "model.num_classes=9"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "solver.lr = 0.5" in printed and "data.root = ''" in printed
    assert "model.roi_head.stages[2].box_head.num_classes = 9" in printed
    assert train.main(["solver.nope=1"]) == 2
    assert "(--print-config lists every key)" in capsys.readouterr().err


def test_help_is_fast_and_names_the_program():
    code = ("import sys\nfrom detection import train\ntry:\n    train.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("usage: python -m detection.train") and "--list-configs" in done.stdout
    assert done.stdout.rstrip().endswith("torch not loaded")


@pytest.mark.parametrize("requested, env, cores, busy, processes, expected", [
    (0, None, 2, 0.1, 1, (2, 1, "free cores")),  # idle 2-core machine: torch's default
    (0, None, 2, 1.3, 1, (1, 0, "free cores")),  # another process busy: one thread, load in the main process
    (0, None, 16, 0.0, 4, (4, 2, "free cores")),  # 4 local processes share 16 cores, 2 workers each
    (3, None, 2, 1.3, 1, (3, 0, "--threads")),
    (0, "5", 2, 0.0, 1, (5, 1, "OMP_NUM_THREADS")),
])
def test_thread_choice(monkeypatch, requested, env, cores, busy, processes, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if env is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    choice = choose_threads(requested, 2 if processes > 1 else 1, processes, cores=cores, busy=busy)
    assert (choice.threads, choice.workers, choice.reason) == expected
    assert choose_threads(0, 4, 1, on_cuda=True, cores=4, busy=0.0).workers == 4


def test_busy_cores_measures_other_processes():
    cpus = affinity_cpus()
    idle_guess = busy_cores(cpus, interval=0.2)
    assert 0.0 <= idle_guess <= len(cpus) + 1e-6
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(cpus, interval=0.5) >= 0.5  # one process spinning on one core
    finally:
        spinner.kill()
        spinner.wait()


def test_run_logs_its_thread_choice_and_restores_the_caller_threads(tmp_path, data_root):
    before = torch.get_num_threads()
    assert _train(tmp_path, data_root, "solver.epochs=1", "--threads", "1") == 0
    assert "CPU threads: 1 intra-op (--threads;" in open(tmp_path / "train.log").read()
    assert torch.get_num_threads() == before


def test_sigint_to_a_training_process_saves_and_exits_130(tmp_path, data_root):
    """A real Ctrl-C (SIGINT from outside) to `detection.train`: no traceback, a resume hint, exit status 130."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE]), OMP_NUM_THREADS="1")
    command = [sys.executable, os.path.join(HERE, "run_standin.py"), "train", "--config", CONFIG, "--data-root",
               data_root, "--work-dir", str(tmp_path), "--no-progress", "solver.epochs=500", "solver.log_interval=1"]
    # Started with SIGINT ignored, as `cmd &` from a script does: the run still installs its handler.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        log = tmp_path / "train.log"
        deadline = time.time() + 60  # for the first logged step
        while time.time() < deadline and process.poll() is None and not (log.exists() and " iter " in log.read_text()):
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted: stopped at iteration" in err and "--resume" in err
    state = load_checkpoint(str(tmp_path / "latest.pth"))
    assert state["iteration"] >= 1 and "holds this state" in err


def test_print_config_shows_the_data_root_and_the_name_once(capsys):
    assert train.main(["--config", "small_mask_rcnn_s14", "--data-root", "data/elsewhere", "--print-config"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "data.root = 'data/elsewhere'" in printed
    assert [line for line in printed if line.startswith("name = ")] == ["name = 'small_mask_rcnn_s14'"]


def test_a_listing_into_a_closed_pipe_ends_quietly():
    command = f"{sys.executable} -m detection.train --list-configs | head -1"
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert "BrokenPipeError" not in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("text", ["(9,", "9,,11", "[9, 11", "9, 11)"])
def test_a_sequence_cut_short_is_refused(text, capsys):
    assert train.main(["--print-config", f"solver.lr_steps={text}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: solver.lr_steps: ") and "(write e.g. (9,11) or 9,11)" in err


@pytest.mark.parametrize("text, steps", [("(9,11)", (9, 11)), ("9,11", (9, 11)), ("(9,)", (9,)), ("9", (9,)),
                                         ("[9, 11]", (9, 11)), ("()", ())])
def test_sequences_as_written(text, steps, capsys):
    assert train.main(["--print-config", f"solver.lr_steps={text}"]) == 0
    assert f"solver.lr_steps = {steps!r}" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("module", ["demo", "export"])
def test_demo_and_export_help_name_the_command(module):
    done = subprocess.run([sys.executable, "-m", f"detection.{module}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.startswith(f"usage: python -m detection.{module} "), done.stdout[:200]
