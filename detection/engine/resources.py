"""The seed table's other columns: peak GPU memory during training (mmdetection's `memory` log field, in MB) and
inference speed in images per second (its "Inf time (fps)")."""

import time
from contextlib import contextmanager

import torch


def peak_memory_mb(device: torch.device) -> int | None:
    """Peak GPU memory allocated by tensors on `device` since the previous call, in MB (2**20 bytes), as
    mmdetection logs it; the peak is reset for the next call. None on devices other than CUDA."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return int(peak // (1024 * 1024))


class InferenceTimer:
    """Images per second of the model call (pre-processing, network, post-processing and mask pasting; not data
    loading nor the COCO conversion), as mmdetection's benchmark measures it: the batches that start within the
    first `warmup_images` images are not counted; CUDA is synchronised around each timed call. `clock` is
    injectable for tests."""

    def __init__(self, device: torch.device, warmup_images: int = 5, clock=time.perf_counter):
        if warmup_images < 0:
            raise ValueError(f"warmup_images: expected a number >= 0, got {warmup_images}")
        self.device, self.warmup_images, self.clock = device, warmup_images, clock
        self.seen = 0  # images through the model, warm-up included
        self.timed_images = 0
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def measure(self, num_images: int):
        """Time the block as one batch of `num_images` images (counted once warm-up is over)."""
        self._sync()
        start = self.clock()
        yield
        self._sync()
        elapsed = self.clock() - start
        if self.seen >= self.warmup_images:
            self.timed_images += num_images
            self.seconds += elapsed
        self.seen += num_images

    def images_per_second(self) -> float | None:
        """None until an image was timed after the warm-up."""
        return self.timed_images / self.seconds if self.timed_images and self.seconds > 0 else None

    def summary(self, batch_size: int) -> str:
        rate = self.images_per_second()
        if rate is None:
            return f"inference speed: not measured ({self.seen} image(s), {self.warmup_images} warm-up)"
        return (f"inference speed: {rate:.2f} images/s ({self.timed_images} images in {self.seconds:.2f} s after "
                f"{self.seen - self.timed_images} warm-up images; batch {batch_size}, {self.device}; model call "
                "only, data loading excluded)")
