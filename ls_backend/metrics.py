"""``GET /metrics`` in Prometheus' text format: each run's progress, the training job and /predict latency.

Each app owns a ``CollectorRegistry`` (never the process-wide default), so several apps in one process, as in
the tests, keep apart. The run's and the job's state is read when Prometheus scrapes (a collector), so it is
never stale; only the /predict latency is recorded as requests happen. Times in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from ls_backend.jobs import TrainingJob
from ls_backend.model import SaliencyModel

# /predict on a CPU runs from tens of ms (a small CNN) to seconds (ResNet-18 at 224 px, DeepLIFT, 8 tasks).
PREDICT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"  # the one OpenMetrics version written here


class BackendMetrics:
    """The registry of one backend app and the /predict latency histogram it observes."""

    def __init__(self, model: SaliencyModel, job: TrainingJob) -> None:
        self.registry = CollectorRegistry()
        self.predict_latency = Histogram(
            "hitl_predict_latency_seconds", "Time to answer one /predict request (errors included)",
            buckets=PREDICT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_RunCollector(model, job))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) of a scrape: OpenMetrics 1.0.0 when the scraper's ``Accept`` asks for it, else
        Prometheus' plain text format."""
        encode, content_type = choose_encoder(OPENMETRICS if wants_openmetrics(accept or "") else "")
        return encode(self.registry), content_type


def wants_openmetrics(accept: str) -> bool:
    """Whether ``accept`` lists OpenMetrics without a version or at 1.0.0. Any other version gets the plain text
    format: prometheus_client raises on ``version=x`` (a 500) and labels other versions it does not write."""
    for media_range in accept.split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        if kind.lower() != "application/openmetrics-text":
            continue
        versions = [value.strip().strip('"') for key, _, value in (p.partition("=") for p in params)
                    if key.strip().lower() == "version"]  # fmt: skip
        if not versions or versions[0] == "1.0.0":
            return True
    return False


class _RunCollector:
    """The run's and the training job's state, read at scrape time."""

    def __init__(self, model: SaliencyModel, job: TrainingJob) -> None:
        self.model, self.job = model, job

    def collect(self) -> Iterator[Metric]:
        status = self.job.status()
        # a backend on one run: unlabelled samples; with a run per project, one sample per project (label project)
        runs = [("" if pid is None else str(pid), m) for pid, m in self.model.models()]
        labels = [] if not self.model.several else ["project"]

        def per_run(name: str, documentation: str, values) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for project, value in values:
                family.add_metric([project] if labels else [], value)
            return family

        yield per_run("hitl_rounds_trained", "Rounds the run has trained (its checkpoints)",
                      [(p, m.run.current_round() + 1) for p, m in runs])  # fmt: skip
        yield _gauge("hitl_training_queue_depth", "Follow-up training rounds queued behind the running one",
                     status["queued_rounds"])  # fmt: skip
        yield _gauge("hitl_training_running", "1 while the backend trains a round, else 0",
                     int(status["state"] == "running"))  # fmt: skip
        accuracies = []
        for project, served in runs:
            history = served.run.history()
            acc = history[-1].get("acc") if history else None
            if acc is not None:  # no sample before a round has been evaluated: 0 would read as a real accuracy
                accuracies.append((project, acc))
        if accuracies:
            yield per_run("hitl_last_accuracy", "Test accuracy (0-1) of the newest trained round", accuracies)
        rounds = CounterMetricFamily("hitl_backend_training_rounds", "Rounds this backend process trained")
        rounds.add_metric([], status["rounds"])
        yield rounds
        tasks = CounterMetricFamily("hitl_predicted_tasks", "Tasks this backend process predicted")
        tasks.add_metric([], self.model.predicted_tasks)
        yield tasks
        writer = self.model.overlays
        for outcome in ("attached", "failed", "dropped"):  # dropped: the queue was full (OVERLAY_QUEUE*)
            overlays = CounterMetricFamily(
                f"hitl_overlays_{outcome}", f"Saliency overlays {outcome} to image-only tasks by this process"
            )
            overlays.add_metric([], getattr(writer, outcome))
            yield overlays
        yield _gauge("hitl_overlay_queue", "Overlays waiting to be written into Label Studio", writer.queued)
        yield _gauge("hitl_overlay_queue_bytes", "PNG bytes of the overlays waiting", writer.queued_bytes)
        if labels:
            yield _gauge("hitl_models_loaded", "Runs whose model is loaded now (at most MAX_MODELS)",
                         sum(m.loaded for _, m in runs))  # fmt: skip
        for project, served in runs:
            version = served.latest_version() if not labels or served.loaded else None
            if version is not None:
                value = {"model_version": version, **({"project": project} if labels else {})}
                yield InfoMetricFamily("hitl_model", "The newest checkpoint's model_version", value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
