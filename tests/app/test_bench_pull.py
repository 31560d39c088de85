"""`hitl bench pull` fills a real Label Studio project and pulls every annotation once; W stays sparse."""

import pytest

from trainer.app.bench_pull import bench_pull, feedback_memory


@pytest.mark.labelstudio
def test_bench_pull_reads_every_annotation_from_the_real_server(label_studio, tmp_path, one_torch_thread):
    r = bench_pull(annotations=120, url=label_studio.url, api_key=label_studio.token, workdir=tmp_path, batch=50)
    assert r["annotations"] == 120 and r["pull_s"] > 0
    # pull_s is rounded to the millisecond, the rate (one decimal) comes from the unrounded seconds
    assert 120 / (r["pull_s"] + 5e-4) - 0.05 <= r["annotations_per_s"] <= 120 / (r["pull_s"] - 5e-4) + 0.05
    # 120 tasks over the 4,000 training images: sample ids 0..119, each with the decoy's cells marked.
    assert r["annotated_images"] == 120


def test_w_memory_grows_with_the_annotated_images_not_the_dataset():
    small = feedback_memory(images=10_000, annotated=1_000)
    large = feedback_memory(images=1_000_000, annotated=1_000)
    assert 0 < large["w_bytes"] < 2 * small["w_bytes"]
    assert feedback_memory(images=1_000_000, annotated=4_000)["w_bytes"] > 3 * large["w_bytes"]
