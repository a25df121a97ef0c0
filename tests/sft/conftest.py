"""A tiny SFT world: synthetic dataset, tiny SmolLM2-shaped model, tiny trained teacher (built once)."""

from __future__ import annotations

import pytest



@pytest.fixture(scope="session")
def sft_world(tiny_dataset_dir, tiny_llama_dir, tiny_teacher_dir):
    return {"data": tiny_dataset_dir, "model": tiny_llama_dir, "teacher": tiny_teacher_dir}


@pytest.fixture(scope="session")
def tiny_overrides(sft_world):
    """``make(out_dir, *extra)``: overrides for configs/sft_tiny.yaml pointing at the tiny world."""

    def make(out_dir, *extra):
        w = sft_world
        return [f"data_path={w['data']}", f"model.path={w['model']}", f"teacher.checkpoint={w['teacher']}",
                f"output_dir={out_dir}", *extra]

    return make
