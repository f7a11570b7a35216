"""`lsearch report`: a self-contained HTML file drawn in a real headless Chromium (Debian's
`chromium` and `chromium-driver`, installed by .ci/run) with every other host blocked, and the
same figures and verdicts stored in the studies for optuna-dashboard."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
from optuna_dashboard._note import get_note_from_system_attrs

from tests.conftest import TINY, run_lsearch

SMALL = [*TINY, "--set", "data.test_per_class=20"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A search of 4 trials, a 2 × 2 comparison from its best trial on 3 seeds, an
    evaluation, and the report of it all."""
    folder = tmp_path_factory.mktemp("report")
    assert run_lsearch("run", "--trials", "4", *SMALL, cwd=folder).returncode == 0
    compared = run_lsearch(
        "compare", "--grid", "label_smoothing=0,0.2", "--grid", "trainable_layers=3,4",
        "--from-best", "--seeds", "0-2", *SMALL, cwd=folder,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    evaluated = run_lsearch("evaluate", "--seeds", "0-1", cwd=folder)
    assert evaluated.returncode == 0, evaluated.stderr
    result = run_lsearch("report", "-o", "report.html", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "wrote report.html" in result.stderr
    yield folder


def chrome() -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert binary and driver_path, "Debian's chromium and chromium-driver are needed (.ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
        # Every host name resolves to nothing: a page that fetched anything would break.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_report_draws_every_figure_offline_in_chromium(reported: Path) -> None:
    page = reported / "report.html"
    text = page.read_text()
    expected = text.count('class="plotly-graph-div"')
    assert expected >= 10
    assert "<script src=" not in text, "plotly.js is embedded, nothing is loaded from elsewhere"
    driver = chrome()
    try:
        driver.get(page.as_uri())
        deadline = time.monotonic() + 60
        drawn = 0
        while time.monotonic() < deadline:
            drawn = driver.execute_script(
                "return [...document.querySelectorAll('.plotly-graph-div')]"
                ".filter(d => d.querySelector('.main-svg')).length"
            )
            if drawn == expected:
                break
            time.sleep(0.25)
        assert drawn == expected, f"{drawn} of {expected} figures drawn"
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert not [url for url in fetched if not url.startswith(("file:", "data:", "blob:"))]
        headings = driver.execute_script(
            "return [...document.querySelectorAll('h2')].map(h => h.textContent)"
        )
        assert headings[0] == "The answer"
        assert "Reliability diagrams" in headings and "Learning curves" in headings
        # Every figure has a title and labelled axes (with units where a quantity has one).
        titles = driver.execute_script(
            "return [...document.querySelectorAll('.plotly-graph-div')]"
            ".map(d => (d.layout && d.layout.title && (d.layout.title.text || d.layout.title))"
            " || '')"
        )
        assert all(titles), titles
        assert driver.save_screenshot(str(reported / "report.png"))
    finally:
        driver.quit()
    assert (reported / "report.png").stat().st_size > 10_000


def system_attrs(storage: str, name: str) -> dict:
    backend = optuna.storages.RDBStorage(storage)
    return backend.get_study_system_attrs(backend.get_study_id_from_name(name))


def test_the_figures_and_verdicts_are_stored_in_the_studies(reported: Path) -> None:
    storage = f"sqlite:///{reported / 'lsearch.db'}"
    figures = get_plotly_graph_objects(system_attrs(storage, "digits"))
    assert {"lsearch-epsilon-val-acc", "lsearch-learning-curves", "lsearch-reliability"} <= set(
        figures
    )
    json.loads(figures["lsearch-reliability"])  # a whole plotly figure, not a fragment
    note = get_note_from_system_attrs(system_attrs(storage, "digits"), None)["body"]
    assert "test accuracy" in note and "over 3 seeds" in note
    comparison = system_attrs(
        storage, "digits compare label_smoothing=0,0.2 trainable_layers=3,4 from-best"
    )
    assert any(key.startswith("lsearch-forest-") for key in get_plotly_graph_objects(comparison))
    assert "Paired differences" in get_note_from_system_attrs(comparison, None)["body"]
    # Reporting again replaces the figures (same ids), it does not add new ones.
    before = set(figures)
    again = run_lsearch("report", "-o", "again.html", cwd=reported)
    assert again.returncode == 0, again.stderr
    assert set(get_plotly_graph_objects(system_attrs(storage, "digits"))) == before


def test_a_report_of_nothing_is_a_user_error(tmp_path: Path) -> None:
    missing = run_lsearch("report", cwd=tmp_path)
    assert missing.returncode == 2 and "no study database" in missing.stderr
    assert not (tmp_path / "report.html").exists()


def test_static_images_say_how_to_enable_the_exporter(reported: Path) -> None:
    result = run_lsearch("report", "--format", "png", "-o", "figures", cwd=reported)
    try:
        import kaleido  # noqa: F401
    except ImportError:
        assert result.returncode == 2
        assert "pip install kaleido" in result.stderr and "chromium" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    else:  # with kaleido and Debian's chromium, every figure becomes a PNG
        assert result.returncode == 0, result.stderr
        assert len(list((reported / "figures").glob("*.png"))) >= 10


def test_a_report_of_a_running_study_says_so(reported: Path, tmp_path: Path) -> None:
    shutil.copy(reported / "lsearch.db", tmp_path / "lsearch.db")
    optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'lsearch.db'}").ask()
    result = run_lsearch("report", "-o", "running.html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "This study is still running (1 trials running" in (tmp_path / "running.html").read_text()
    )


def test_binned_means_leave_empty_cells_empty() -> None:
    from lsearch.outputs.figures import binned_means

    # Points at (0, 5) -> cell (row 0, col 0); two at (0.3, 20) -> the top right cell.
    x_edges, y_edges, z = binned_means([0, 0.3, 0.3], [5, 20, 20], [50, 90, 100], bins=2)
    assert x_edges == [0.0, 0.15, 0.3] and y_edges == [5.0, 12.5, 20.0]
    assert z == [[50.0, None], [None, 95.0]]


def test_a_multi_objective_study_gets_its_pareto_front(tmp_path: Path) -> None:
    run = run_lsearch(
        "run", "--trials", "3", *TINY, "--set", 'objective.metric="val_acc+val_ece"', cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    result = run_lsearch("report", "-o", "pareto.html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "pareto.html").read_text()
    assert 'id="lsearch-pareto-front"' in text and "Pareto-optimal trial" in text


def test_publish_does_not_summarise_a_comparison_again(
    reported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A comparison whose summary the caller passes (`lsearch compare` just computed it) is
    not summarised again: its stored note and the verdicts come from what was given; the
    search's other comparisons are still summarised from their trials."""
    from lsearch import comparison
    from lsearch.outputs import html_report

    shutil.copy(reported / "lsearch.db", tmp_path / "lsearch.db")
    url = f"sqlite:///{tmp_path / 'lsearch.db'}"
    storage = optuna.storages.RDBStorage(url)
    results = {s.study_name: r for s, r in html_report.comparison_results(storage, "digits")}
    name = "digits compare label_smoothing=0,0.2 trainable_layers=3,4 from-best"
    assert name in results and len(results) >= 2  # the comparison and the evaluation
    marker = "MARKER: the summary the caller gave"
    calls: list[str] = []
    real = comparison.summarise

    def counted(request: object, study: optuna.Study) -> dict:
        calls.append(study.study_name)
        return real(request, study)

    monkeypatch.setattr(comparison, "summarise", counted)
    _, verdicts = html_report.publish(
        storage, "digits", summaries={name: {**results[name], "verdicts": [marker]}}
    )
    assert name not in calls and sorted(calls) == sorted(set(results) - {name})
    assert marker in verdicts
    assert marker in get_note_from_system_attrs(system_attrs(url, name), None)["body"]
    assert marker in get_note_from_system_attrs(system_attrs(url, "digits"), None)["body"]
