"""`ktk report` on a real sweep and a real folder of runs, and the page rendered in headless Chromium."""

import base64
import json
import os
import re
import shutil
import subprocess

import pytest

from helpers import PNG_SIGNATURE, assert_png, ktk, parse_html
from toolkit.analysis.report import report
from toolkit.errors import UserError


@pytest.fixture(scope="session")
def sweep_report(sweep, tmp_path_factory):
    return report(sweep, out_dir=tmp_path_factory.mktemp("sweep-report"))


def embedded_pngs(page):
    """The decoded bytes of every <img> of a parsed page (each must be an inline base64 PNG)."""
    out = []
    for source in page.images:
        assert source.startswith("data:image/png;base64,"), "images must be embedded, not linked"
        out.append(base64.b64decode(source.split(",", 1)[1]))
    return out


@pytest.mark.slow
def test_sweep_report_holds_space_best_plots_and_trials(sweep, sweep_report):
    text = sweep_report.html.read_text()
    page = parse_html(text)
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings == ["Best configuration", "Search space", "Plots", "Trials"]

    best_values, test_metrics, space, trials = page.tables
    trials_csv = (sweep / "trials.csv").read_text().splitlines()
    assert [row[0] for row in best_values[1:]] == ["model.dropout", "training.optimizer.learning_rate"]
    best_metrics = json.loads((sweep / "best" / "metrics.json").read_text())
    assert test_metrics[0] == ["metric", "train", "validation", "test"]
    loss_row = next(row for row in test_metrics if row[0] == "loss")
    assert float(loss_row[3]) == pytest.approx(best_metrics["test"]["loss"], rel=1e-3)
    assert space[0] == ["parameter", "searched", "when", "best", "note"]
    assert space[1][:2] == ["model.dropout", "float in [0, 0.5]"]
    assert space[2][:2] == ["training.optimizer.learning_rate", "one of 0.01, 0.05, 1e+30"]
    assert len(trials) == 1 + (len(trials_csv) - 1) + 1  # header, every trial, best/
    assert re.search(r'<tr class="best"><td>sweep#\d+</td>', text)  # the best trial is highlighted
    command = f"ktk run {sweep / 'best' / 'config.yaml'}"
    assert f"<pre><code>{command}</code></pre>" in text

    images = embedded_pngs(page)
    assert len(images) == len(sweep_report.images) == 4  # two parameters, statuses, best trials' curves
    for data, path in zip(images, sweep_report.images):
        assert data[:8] == PNG_SIGNATURE and data == path.read_bytes()
        assert_png(path)

    markdown = sweep_report.markdown.read_text()
    assert markdown.startswith("# Sweep report: moons-sweep\n")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(links) == sorted(p.name for p in sweep_report.images)
    assert all((sweep_report.markdown.parent / link).is_file() for link in links)
    assert f"```\n{command}\n```" in markdown
    tables = [block for block in markdown.split("\n\n") if block.startswith("| ")]
    assert len(tables) == 4 and len(tables[-1].splitlines()) == 2 + len(trials) - 1


@pytest.mark.slow
def test_report_of_a_folder_of_runs(runs, tmp_path):
    result = ktk("report", runs, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wrote", str(tmp_path / "report.html"), "wrote", str(tmp_path / "report.md")]
    text = (tmp_path / "report.html").read_text()
    page = parse_html(text)
    metrics, table = page.tables
    header = table[0]
    accuracy = [float(row[header.index("validation.accuracy")]) for row in table[1:]]
    assert sorted(row[0] for row in table[1:]) == ["dropout", "fast", "plain"]
    assert accuracy == sorted(accuracy, reverse=True)  # best first
    best = table[1][0]
    assert f"<pre><code>ktk run {runs / best / 'config.yaml'}</code></pre>" in text
    assert [PNG_SIGNATURE] == [data[:8] for data in embedded_pngs(page)]  # the learning curves
    markdown = (tmp_path / "report.md").read_text().splitlines()
    assert sum(line.startswith("| ---") for line in markdown) == 2  # the best run's metrics, the runs


def test_report_of_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as error:
        report(tmp_path / "nothing")
    assert str(error.value) == (f"SWEEP_OR_DIR: not found; expected a sweep directory or a folder of runs; "
                                f"received '{tmp_path / 'nothing'}'.")
    result = ktk("report", tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("ktk: error: PATH: no run or sweep directories found")


def _chromium():
    """The headless browser; in CI (CI=true) its absence fails the test, since .ci/run installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, but CI=true: .ci/run must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


# Counts, once the page has loaded, the images the browser decoded and the tables it laid out.
_PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var tables = Array.from(document.querySelectorAll("table")).filter(function (t) {
    return t.getBoundingClientRect().height > 0; }).length;
  document.title = "probe " + images.length + " " + decoded + " " + tables;
});
</script>"""


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(sweep_report, tmp_path):
    chromium = _chromium()
    probed = tmp_path / "probed.html"
    probed.write_text(sweep_report.html.read_text().replace("</body>", _PROBE + "\n</body>"))
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run([*browser, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom.stdout).group(1)
    images, decoded, tables = map(int, title.split()[1:])
    assert images == len(sweep_report.images) and decoded == images, title
    assert tables == 4, title

    shot = tmp_path / "page.png"
    taken = subprocess.run([*browser, "--window-size=1400,4000", f"--screenshot={shot}",
                            sweep_report.html.as_uri()], capture_output=True, text=True, timeout=90)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    # the plots' blue trial points and red best-trial stars are on the page, not just text on white
    blue = ((pixels[..., 2] > 0.55) & (pixels[..., 0] < 0.3)).sum()
    red = ((pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)).sum()
    assert blue > 200 and red > 50, (blue, red)


@pytest.mark.slow
def test_the_reproduce_command_reproduces_the_best_trial(sweep, tmp_path):
    import html
    import shlex

    from toolkit.analysis.compare import read_sweep
    from toolkit.config import load_config
    from toolkit.runs import run

    copy = tmp_path / "unfinished"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("best", "tuner"))  # as before best/ is retrained
    result = report(copy, out_dir=tmp_path / "report")
    command = re.search(r"<pre><code>(ktk run .*?)</code></pre>", result.html.read_text()).group(1)
    words = shlex.split(html.unescape(command))
    assert words[:3] == ["ktk", "run", str(copy / "config.yaml")]
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    best = read_sweep(copy).best_trial()
    assert overrides == [f"model.dropout={best['model.dropout']!r}",
                         f"training.optimizer.learning_rate={best['training.optimizer.learning_rate']!r}"]
    again = run(load_config(words[2], overrides=overrides), out_dir=tmp_path / "again", verbose=0)
    assert again.metrics["validation"]["loss"] == pytest.approx(best["score"], rel=1e-6)
