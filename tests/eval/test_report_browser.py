"""The HTML report rendered by a real headless browser (skips without a chromium binary)."""

import re
import shutil
import subprocess

import pytest

from eval.judge import JudgeConfig
from eval.ragas_metrics import chat_judge
from eval.runner import RunConfig, run
from eval.systems import SystemOptions
from retrieval.settings import Settings
from tests.eval.conftest import SCRIPT, FakeSystem, SchemaJudge

CHECK = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img.chart')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100);
  const d = document.createElement('div');
  d.id = 'img-check';
  d.textContent = `decoded ${ok.length}/${imgs.length} ` +
    imgs.map(i => i.naturalWidth + 'x' + i.naturalHeight).join(',');
  document.body.appendChild(d);
});
</script>
"""


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary: the HTML rendering test needs a headless browser")


@pytest.fixture
def report_dir(tmp_path, question_file, harmful_file, hash_embedder):
    config = RunConfig(
        questions=[str(question_file)], systems=["no-rag", "base"], out=tmp_path / "run",
        options=SystemOptions(settings=Settings.resolve()), harmful=str(harmful_file),
        judge=JudgeConfig(kind="local"),
    )
    calls = []
    judge = chat_judge(SchemaJudge(garbage_for={"ContextPrecisionOutput"}))
    judge.name = "SmolLM2-135M-Instruct (embedded, local)"
    run(config, build=lambda name, opts, llm=None: FakeSystem(name, SCRIPT, calls),
        embedder=hash_embedder,
        judge_llm=judge)
    return config.out


def test_html_is_self_contained_and_warns_about_weak_judge(report_dir):
    html = (report_dir / "report.html").read_text()
    assert len(re.findall(r'<img class="chart"[^>]+src="data:image/png;base64,', html)) == 2
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert 'id="judge-warning"' in html and "135M" in html
    assert "unparseable judge output" in html  # not-scored reasons are shown
    md = (report_dir / "report.md").read_text()
    assert "WARNING" in md and "| citation_accuracy |" in md


def test_html_renders_charts_in_headless_chromium(report_dir, tmp_path):
    browser = _browser()
    page = tmp_path / "check.html"
    page.write_text((report_dir / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    p = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--user-data-dir=" + str(tmp_path / "profile"), "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    m = re.search(r'<div id="img-check">decoded (\d+)/(\d+) ([^<]*)</div>', p.stdout)
    assert m, f"browser produced no check result: rc={p.returncode} {p.stderr[-500:]}"
    assert m.group(1) == m.group(2) == "2", m.group(0)
    assert "casewise evaluation" in p.stdout and "judge-warning" in p.stdout
