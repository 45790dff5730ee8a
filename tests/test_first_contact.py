"""A new user's first commands at 80 columns (a CI log, an ssh session), and input that is checked, not ignored.

Tables and help keep what tells rows and options apart whole at 80 columns (`ls`, `explain`, `compare`);
`remote add` of a missing directory, `prefetch` of a local task offline, `doctor` without an NPU and a
command line click cannot parse answer in one clear line.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import tree_snapshot
from rbln_eval.evaluation.compare import ComparisonReport, MetricDelta, TaskComparison
from rbln_eval.identity import BundleKey, ModelSource
from rbln_eval.store import Store
from rbln_eval.util.units import human_size
from storehelpers import make_key, write_files

DEMO_TASKS = str(Path(__file__).resolve().parent.parent / "rbln_eval" / "demo" / "tasks")
ELLIPSIS = "…"
TYPE_LABELS = re.compile(r"<(str|int|float|bool|path|list\[\w+\])>")


def cli(*args: str, columns: int = 80, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": str(columns)}
    for name, value in (env or {}).items():
        if value is None:
            full.pop(name, None)
        else:
            full[name] = value
    return subprocess.run([sys.executable, "-m", "rbln_eval", *args], capture_output=True, text=True, env=full, timeout=180)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def blocks(text: str, digests: list[str]) -> dict[str, list[str]]:
    """The lines of each bundle's row (or record): from the line naming its digest to the next bundle's."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        named = [d for d in digests if d[:12] in line]
        if named:
            current = found.setdefault(named[0], [])
        if current is not None:
            current.append(line)
    return found


def assert_whole(lines: list[str], word: str) -> None:
    assert any(word in line for line in lines), (word, lines)


def check_listing(text: str, bundles: dict[str, BundleKey], aliases: dict[str, str], store: Store) -> None:
    """Every line fits 80 columns; each bundle's row holds its whole settings, size and aliases."""
    assert text.strip() and ELLIPSIS not in text
    assert all(len(line.rstrip()) <= 80 for line in text.splitlines()), text
    rows = blocks(text, list(bundles))
    assert sorted(rows) == sorted(bundles), text
    for digest, key in bundles.items():
        for name, value in key.compile.items():
            assert_whole(rows[digest], f"{name}={value}")
        assert_whole(rows[digest], human_size(store.resolve(digest).manifest.total_size))
    for alias, digest in aliases.items():
        assert_whole(rows[digest], alias)


def test_ls_at_80_columns_tells_two_configs_of_one_model_apart(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    model = "meta-llama/Llama-3.2-1B-Instruct"
    settings = {"max_seq_len": 256, "tp": 1, "kvcache_partition_len": 4096, "attn_impl": "flash"}
    keys = [make_key(compile_config={**settings, "batch_size": n}) for n in (1, 4)]
    for key in keys:
        store.get_or_build(key, write_files, info={"model": model})
    store.set_ref("llama-1b@main:bs1", keys[0].digest)
    result = cli("ls", "--store", str(store.root))
    assert result.returncode == 0, result.stderr
    check_listing(result.stdout, {k.digest: k for k in keys}, {"llama-1b@main:bs1": keys[0].digest}, store)
    assert_whole(result.stdout.splitlines(), model)  # said once for both
    rows = blocks(result.stdout, [k.digest for k in keys])
    assert_whole(rows[keys[0].digest], "batch_size=1") and assert_whole(rows[keys[1].digest], "batch_size=4")
    assert not any("batch_size=4" in line for line in rows[keys[0].digest])

    listed = json.loads(cli("ls", "--json", "--store", str(store.root)).stdout)
    assert {row["digest"]: row["aliases"] for row in listed} == {keys[0].digest: ["llama-1b@main:bs1"], keys[1].digest: []}


def test_ls_at_80_columns_keeps_every_column_of_unlike_bundles(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    keys = {
        "org/tiny": make_key(),
        "org/tiny-t5": make_key(model_class="seq2seq"),
        "meta-llama/Llama-3.1-70B-Instruct": make_key(
            source=ModelSource(kind="hub", id="meta-llama/Llama-3.1-70B-Instruct", revision="b" * 40),
            compile_config={"max_seq_len": 131072, "tp": 8, "batch_size": 16, "kvcache_partition_len": 16384},
            target="RBLN-CA25",
        ),
    }
    for model, key in keys.items():
        store.get_or_build(key, write_files, info={"model": model})
    aliases = {"tiny@main:bs1": keys["org/tiny"].digest, "tiny-latest": keys["org/tiny"].digest}
    for alias, digest in aliases.items():
        store.set_ref(alias, digest)
    result = cli("ls", "--store", str(store.root))
    assert result.returncode == 0, result.stderr
    check_listing(result.stdout, {k.digest: k for k in keys.values()}, aliases, store)
    for model, key in keys.items():
        row = blocks(result.stdout, [k.digest for k in keys.values()])[key.digest]
        assert_whole(row, key.target)
        assert model in "".join(line.strip() for line in row)  # a long model id may wrap, never lose its end


def test_help_at_80_columns_names_options_whole_with_click_types(monkeypatch: pytest.MonkeyPatch) -> None:
    from rbln_eval.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    root = typer.main.get_command(app)
    commands = [[name] for name in root.commands if name != "lm-eval"]  # lm-eval's help is lm_eval's own
    commands += [["remote", name] for name in root.commands["remote"].commands]
    runner = CliRunner()
    for command in [[], *commands]:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        text = result.output
        if command and root.commands[command[0]].epilog:  # what follows the options is the command's own text
            text = text[: text.index("Show this message and exit.")]
        assert ELLIPSIS not in text and not TYPE_LABELS.search(text), (command, text)
        assert all(len(line) <= 80 for line in text.splitlines()), (command, text)

    def help_of(*command: str) -> str:
        return runner.invoke(app, [*command, "--help"]).output

    for pattern in (r"--artifact TEXT\b", r"--tp INTEGER\b", r"--max-seq-len INTEGER\b", r"--store PATH\b"):
        assert re.search(pattern, help_of("run")), pattern
    assert "--include_path, --include-path TEXT" in help_of("prefetch")
    assert re.search(r"^  REF  ", help_of("show"), re.MULTILINE) and "Usage: rbln-eval show [OPTIONS] REF\n" in help_of("show")


def test_explain_at_80_columns_shows_settings_only_one_key_has(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    small, large = make_key(), make_key(compile_config={"max_seq_len": 131072, "tp": 8, "kvcache_partition_len": 16384})
    for key in (small, large):
        store.get_or_build(key, write_files)
    result = cli("explain", small.digest[:12], large.digest[:12], "--store", str(store.root))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert rows["compile.kvcache_partition_len"] == ["<absent>", "16384"]
    assert rows["compile.max_seq_len"] == ["256", "131072"]


def test_remote_add_of_a_missing_directory_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    store, missing = tmp_path / "store", tmp_path / "not-there"
    line = one_error_line(cli("remote", "add", "nfs", str(missing), "--store", str(store)))
    assert line == f"error: directory {missing} does not exist: create it (mkdir -p {missing}) or check the path"
    assert not store.exists() and not missing.exists()

    missing.mkdir()
    assert cli("remote", "add", "nfs", str(missing), "--store", str(store)).returncode == 0
    before = tree_snapshot(store)
    line = one_error_line(cli("remote", "add", "other", str(tmp_path / "gone"), "--store", str(store)))
    assert "gone does not exist" in line and tree_snapshot(store) == before
    listed = json.loads(cli("remote", "ls", "--json", "--store", str(store)).stdout)
    assert listed == [{"name": "nfs", "kind": "dir", "location": str(missing), "private": False}]


#: An endpoint nothing answers on: a command that asked the Hub would fail.
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.parametrize("offline", ["1", "0"], ids=["offline", "online-without-hub"])
def test_prefetch_of_local_tasks_fetches_nothing(offline: str) -> None:
    env = {**NO_HUB, "HF_HUB_OFFLINE": offline, "HF_DATASETS_OFFLINE": offline}
    result = cli("prefetch", "--tasks", "demo_mc,demo_gen", "--include_path", DEMO_TASKS, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "task demo_mc: nothing to fetch (local files)",
        "task demo_gen: nothing to fetch (local files)",
    ]
    assert result.stderr.strip() == "nothing to fetch: these tasks read local files, offline too"  # no lm_eval advice


def test_prefetch_of_a_hub_task_offline_is_refused(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: some-org/some-dataset\noutput_type: loglikelihood\ntest_split: test\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    env = {**NO_HUB, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    line = one_error_line(cli("prefetch", "--tasks", "hub_task", "--include_path", str(tasks), env=env))
    assert "prefetch downloads into the HF caches: unset HF_HUB_OFFLINE" in line


@pytest.mark.parametrize(
    ("rebel", "hint"),
    [(None, "RBLN_EVAL_SIMULATE=1"), ("sdk", "RBLN_EVAL_SIMULATE=force"), ("simulator", None)],
    ids=["nothing", "sdk-without-npu", "simulated"],
)
def test_doctor_without_npu_names_the_simulator(rebel: str | None, hint: str | None, tmp_path: Path) -> None:
    from rich.console import Console

    from rbln_eval.execution.devices import DeviceReport
    from rbln_eval.execution.doctor import collect, render

    console = Console(file=io.StringIO(), width=200, highlight=False)
    render(collect(Store(tmp_path / "store"), DeviceReport(rebel=rebel)), console)
    lines = [line for line in console.file.getvalue().splitlines() if "to try rbln-eval here without an NPU" in line]
    if hint is None:
        assert lines == []
    else:
        assert lines == [f"  to try rbln-eval here without an NPU, set {hint}: a CPU simulator of the rebel SDK (simulated bundles get a SIM- target)"]


def test_lm_eval_advice_is_shown_only_at_info(caplog: pytest.LogCaptureFixture) -> None:
    from rbln_eval.util.logs import LmEvalAdviceFilter, quiet_lm_eval

    task_logger, lm_eval_logger = logging.getLogger("lm_eval.api.task"), logging.getLogger("lm_eval")
    filters, level, propagate = list(task_logger.filters), lm_eval_logger.level, lm_eval_logger.propagate
    advice = "demo_mc: Custom kwargs can be passed to `--metadata` in console (as json string) or to the TaskManager."
    try:
        lm_eval_logger.propagate = True
        lm_eval_logger.setLevel(logging.WARNING)
        quiet_lm_eval()
        quiet_lm_eval()
        assert sum(isinstance(f, LmEvalAdviceFilter) for f in task_logger.filters) == 1
        with caplog.at_level(logging.DEBUG):
            task_logger.warning(advice)
            task_logger.warning("a real warning")
            quiet_lm_eval("INFO")
            task_logger.warning(advice)
        assert [r.getMessage() for r in caplog.records] == ["a real warning", advice]
    finally:
        task_logger.filters[:] = filters
        lm_eval_logger.setLevel(level)
        lm_eval_logger.propagate = propagate


ADVICE = "demo_mc: Custom kwargs can be passed to `--metadata` in console (as json string) or to the TaskManager."


def test_a_sweep_cell_keeps_lm_eval_advice_out_without_the_cli(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Ray task or worker process scores cells without going through the CLI's main()."""
    from rbln_eval.errors import RblnEvalError
    from rbln_eval.sweep.cells import evaluate_cell
    from rbln_eval.sweep.source import BundleSource
    from rbln_eval.util.logs import LmEvalAdviceFilter

    task_logger, lm_eval_logger = logging.getLogger("lm_eval.api.task"), logging.getLogger("lm_eval")
    filters, level, propagate = list(task_logger.filters), lm_eval_logger.level, lm_eval_logger.propagate
    try:
        task_logger.filters[:] = [f for f in filters if not isinstance(f, LmEvalAdviceFilter)]
        lm_eval_logger.propagate = True
        lm_eval_logger.setLevel(logging.WARNING)
        missing = BundleSource(digest="0" * 64, store=str(tmp_path / "store"))
        with pytest.raises(RblnEvalError, match="is neither in this node's store"):
            evaluate_cell(missing, {"task": "demo_mc"}, str(tmp_path / "cell"), log_samples=False)
        with caplog.at_level(logging.DEBUG):
            task_logger.warning(ADVICE)
            task_logger.warning("a real warning")
        assert [r.getMessage() for r in caplog.records] == ["a real warning"]
    finally:
        task_logger.filters[:] = filters
        lm_eval_logger.setLevel(level)
        lm_eval_logger.propagate = propagate


def comparison_report(tolerance: float | None = 1e-4) -> ComparisonReport:
    tasks = [
        TaskComparison(
            "hellaswag", "multiple_choice", 8,
            [MetricDelta("acc,none", 1.4142, 1.4142, 0.0), MetricDelta("acc_norm,none", 0.625, 0.5, 0.125)],
            logprobs=32, max_abs_logprob_delta=1.23e-05, mean_abs_logprob_delta=4.5e-06, argmax_agreement=0.875,
            failures=["acc_norm,none differs by +0.125"],
        ),
        TaskComparison(
            "lambada_openai", "loglikelihood", 8, [MetricDelta("perplexity,none", 2531.12, 2531.1, 0.02)],
            logprobs=8, max_abs_logprob_delta=1e-3, mean_abs_logprob_delta=2e-4,
        ),
        TaskComparison("demo_gen", "generate_until", 8, [MetricDelta("exact_match,none", 0.5, 0.5, 0.0)], generation_agreement=1.0),
    ]
    reference = {"model": "hf", "pretrained": "meta-llama/Llama-3.2-1B-Instruct", "dtype": "float32", "device": "cpu"}
    return ComparisonReport("3f2a9c1b2d4e" + "0" * 52, "SIM-RBLN-CA25", reference, tasks, 8.0, None, tolerance)


#: Each task's cells, as compare prints them: its metrics' rows, then its requests' row ending in the verdict.
METRIC_CELLS = [
    ["hellaswag", "acc", "1.4142", "1.4142", "+0.00e+00"],
    ["hellaswag", "acc_norm", "0.625", "0.5", "+1.25e-01"],
    ["lambada_openai", "perplexity", "2531.12", "2531.1", "+2.00e-02"],
    ["demo_gen", "exact_match", "0.5", "0.5", "+0.00e+00"],
]
REQUEST_CELLS = [
    ["hellaswag", "1.23e-05", "4.50e-06", "87.5%", "-", "FAIL"],
    ["lambada_openai", "1.00e-03", "2.00e-04", "-", "-", "ok"],
    ["demo_gen", "-", "-", "-", "100.0%", "ok"],
]


def printed_comparison(report: ComparisonReport, monkeypatch: pytest.MonkeyPatch, columns: int) -> str:
    from rich.console import Console

    from rbln_eval.cli.comparison import print_comparison

    monkeypatch.setenv("COLUMNS", str(columns))
    console = Console(file=io.StringIO(), highlight=False, soft_wrap=True)  # as wide as COLUMNS says
    print_comparison(report, console)
    return console.file.getvalue()


def test_compare_at_80_columns_keeps_every_number_and_the_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    text = printed_comparison(comparison_report(), monkeypatch, 80)
    lines = text.splitlines()
    assert lines[0] == (
        "rbln 3f2a9c1b2d4e (SIM-RBLN-CA25) vs hf meta-llama/Llama-3.2-1B-Instruct (float32, cpu), "
        "limit: 8, num_fewshot: None, tolerance: 0.0001"
    )
    table = lines[1:]
    assert ELLIPSIS not in text and all(len(line.rstrip()) <= 80 for line in table), text
    rows = [line.split() for line in table if line.strip()]
    assert rows == [
        ["task", "metric", "rbln", "hf", "Δ"], *METRIC_CELLS,
        ["task", "max", "|Δlp|", "mean", "|Δlp|", "argmax", "agree", "gen", "agree", "verdict"], *REQUEST_CELLS,
    ], text

    without_tolerance = printed_comparison(comparison_report(tolerance=None), monkeypatch, 80)
    assert "verdict" not in without_tolerance and "tolerance" not in without_tolerance
    assert [line.split() for line in without_tolerance.splitlines()[-3:]] == [row[:-1] for row in REQUEST_CELLS]


def test_compare_narrower_than_its_tables_prints_records_with_whole_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    text = printed_comparison(comparison_report(), monkeypatch, 40)
    assert ELLIPSIS not in text
    values = [line.split()[-1] for line in text.splitlines()[1:] if line.strip()]  # `header  value` lines
    assert all(len(line.rstrip()) <= 40 for line in text.splitlines()[1:]), text
    assert [value for value in values if value in {"ok", "FAIL"}] == ["FAIL", "ok", "ok"]
    for cells in (*METRIC_CELLS, *REQUEST_CELLS):
        for cell in cells[1:]:
            assert cell == "-" or cell in values, (cell, text)


def test_a_command_line_click_cannot_parse_is_one_error_line_naming_working_help() -> None:
    for args, message in (
        (["show"], "missing argument 'REF'"),
        (["ls", "--bogus"], "no such option: --bogus"),
        (["compare", "3f2a9c", "--tasks", "demo_mc", "--limit", "many"], "invalid value for '--limit'"),
    ):
        line = one_error_line(cli(*args))
        match = re.fullmatch(rf"error: {re.escape(message)}.* \(see (.+) {args[0]} --help\)", line)
        assert match, line
    help_command = f"{match.group(1)} compare --help"  # as printed: it runs from here
    shown = subprocess.run(help_command, shell=True, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0 and shown.stdout.startswith("Usage: rbln-eval compare [OPTIONS] REF"), shown

    for args in (["--help"], ["show", "--help"], ["--version"]):
        result = cli(*args)
        assert result.returncode == 0 and result.stdout and not result.stderr, (args, result)
    group_alone = cli("remote")  # a group named alone still shows its help
    assert group_alone.returncode == 2 and group_alone.stderr.startswith("Usage: rbln-eval remote [OPTIONS] COMMAND")
