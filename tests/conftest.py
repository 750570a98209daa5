"""Shared fixtures: the real-data folder (../shared/data, skipped when absent) and one local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DR_RAY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data (real fundus images, research-only). Tests using it skip when it is absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (ray.init costs ~10 s on 2 cores).

    Jobs the tests start as subprocesses (``dr-ray <stage>``, ``jobs/<stage>.py``: kill-and-resume, the demo) join
    it through ``RAY_ADDRESS`` instead of starting a cluster each; fault injection reaches their workers through
    the job's runtime env (:func:`dr_ray.pipelines.runtime.init_ray`).
    """
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from dr_ray.pipelines.runtime import use_local_ray_train_settings

    use_local_ray_train_settings()  # the suite's many tiny Ray Train runs on one machine, as `dr-ray demo` runs them
    started = not ray.is_initialized()
    if started:
        # the dashboard serves the state API, through which Ray Train's PlacementGroupCleaner sees that a
        # killed controller (a trial stopped by ASHA, a job whose driver died) is gone and frees its CPUs
        # address="local": always a cluster of the suite's own, never one already running on the machine (a user's
        # `ray start`, another test session), which ray.init() would otherwise join
        ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # a 2.60 local cluster asks its clients for the token it wrote
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if started:
        ray.shutdown()


# What a user's browser shows of a report: every image decoded, nothing wider than the page, no cell text cut.
_BROWSER_CHECK_JS = """
<script>
window.addEventListener('load', () => {
  const body = document.body.getBoundingClientRect();
  const imgs = [...document.images].map(i => ({alt: i.alt.slice(0, 60), ok: i.complete && i.naturalWidth > 0,
                                               shown: i.getBoundingClientRect().width}));
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.id === 'dr-ray-check') continue;
    const r = el.getBoundingClientRect();
    const text = (el.textContent || '').trim().slice(0, 60);
    if (r.width && (r.right > body.right + 1 || r.left < body.left - 1)) out.push(['outside page', el.tagName, text]);
    if (el.clientWidth && el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX === 'visible')
      out.push(['text overflows', el.tagName, text]);
  }
  const pre = document.createElement('pre');
  pre.id = 'dr-ray-check';
  pre.textContent = JSON.stringify({images: imgs, problems: out, page: document.documentElement.scrollWidth,
                                    viewport: window.innerWidth});
  document.body.appendChild(pre);
});
</script>
"""


@pytest.fixture(scope="session")
def browser_check(tmp_path_factory):
    """``check(html_path) -> {"images": [...], "problems": [...], "page", "viewport"}``: the report opened in a real
    headless Chromium (``apt-get install chromium``; ``.ci/run`` installs it) at 1280 px, measured after load.
    None when this machine has no Chromium: a test that needs it skips."""
    import json
    import re
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        return None
    tmp = tmp_path_factory.mktemp("browser")

    def check(html_path) -> dict:
        page = tmp / f"{len(list(tmp.iterdir()))}.html"
        page.write_text(Path(html_path).read_text(encoding="utf-8").replace("</body>", _BROWSER_CHECK_JS + "</body>"),
                        encoding="utf-8")
        res = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,900",
                              "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=180)
        m = re.search(r'<pre id="dr-ray-check">(.*?)</pre>', res.stdout, re.S)
        assert m, f"Chromium printed no check result (rc {res.returncode}): {res.stderr[-2000:]}"
        import html as _html

        return json.loads(_html.unescape(m.group(1)))

    return check



@pytest.fixture(scope="session")
def assert_in_browser(browser_check):
    """``assert_in_browser(html_path)``: every image of the report decodes and is shown, nothing sticks out of the
    page or out of its box, in Chromium; None without Chromium (the caller says what it then skips)."""
    if browser_check is None:
        return None

    def check(html_path) -> None:
        res = browser_check(html_path)
        assert res["images"] and all(i["ok"] and i["shown"] > 50 for i in res["images"]), res["images"]
        assert res["problems"] == [] and res["page"] <= res["viewport"], res["problems"][:10]

    return check
