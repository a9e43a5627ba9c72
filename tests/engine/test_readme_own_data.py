"""The README's "Training on your own dataset" commands run as written: make the example dataset, train the small
config on it (one epoch here instead of the section's full schedule), draw the detections of a validation image."""

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECTION = "## Training on your own dataset"


def readme_commands(readme: str, section: str = SECTION) -> list[list[str]]:
    """The commands of the first ```bash block after `section`, one argv per command (backslash continuations
    joined)."""
    body = readme.split(section, 1)[1]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    text = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_section_is_three_pastable_commands():
    commands = readme_commands(open(os.path.join(REPO, "README.md")).read())
    assert [argv[:3] for argv in commands] == [["python", "-m", "detection.data.example_coco"],
                                               ["python", "-m", "detection.train"],
                                               ["python", "-m", "detection.demo"]]
    train = commands[1]
    assert "data.dataset=coco" in train and "model.num_classes=3" in train
    assert train[train.index("--config") + 1] == "small_mask_rcnn_s14"


@pytest.mark.slow  # 35 s on an idle 2-core machine, over 2 min on a busy one
def test_the_readme_own_data_commands_run(tmp_path):
    commands = readme_commands(open(os.path.join(REPO, "README.md")).read())
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="2")
    outputs = []
    for argv in commands:
        argv = [sys.executable, *argv[1:]]
        if argv[2] == "detection.train":
            argv += ["solver.epochs=1", "--no-progress"]  # the section's run takes minutes; one epoch here
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (argv, done.stderr[-3000:])
        outputs.append(done)
    assert "3 categories (ids 3, 7, 11)" in outputs[0].stdout
    assert re.search(r"final: bbox AP [0-9.]+, segm AP [0-9.]+", outputs[1].stdout), outputs[1].stdout
    log = (tmp_path / "work_dirs" / "small_mask_rcnn_s14" / "train.log").read_text()
    assert "skipped crowd annotation (ignore region): 1, image without annotations: 1" in log
    assert "Traceback" not in log
    assert "drawn to demo.png" in outputs[2].stdout and (tmp_path / "demo.png").stat().st_size > 0
