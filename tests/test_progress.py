"""Progress bars redraw on a terminal and print whole lines at coarse steps elsewhere."""
import io

from tinyvit_backbone.progress import LineProgress, interactive, progress_bar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_every_few_percent_and_no_redraws(monkeypatch):
    monkeypatch.delenv("TINYVIT_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress_bar(range(200), desc="work", stream=out)
    assert isinstance(bar, LineProgress)
    assert sum(1 for _ in bar) == 200
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 20 <= len(lines) <= 23  # 0%, every 5%, 100%
    assert lines[-1].startswith("work: 100%") and "200/200" in lines[-1]


def test_a_terminal_keeps_its_redrawing_bar(monkeypatch):
    monkeypatch.delenv("TINYVIT_PROGRESS", raising=False)
    out = _Tty()
    assert interactive(out)
    for _ in progress_bar(range(50), desc="work", stream=out, mininterval=0):
        pass
    assert "\r" in out.getvalue() and not isinstance(progress_bar(stream=out), LineProgress)


def test_the_mode_can_be_forced_and_bars_turned_off(monkeypatch):
    monkeypatch.setenv("TINYVIT_PROGRESS", "lines")
    assert isinstance(progress_bar(stream=_Tty(), total=3), LineProgress)
    monkeypatch.setenv("TINYVIT_PROGRESS", "bars")
    assert interactive(io.StringIO())
    monkeypatch.delenv("TINYVIT_PROGRESS")
    out = io.StringIO()
    for _ in progress_bar(range(10), stream=out, enabled=False):
        pass
    assert out.getvalue() == ""


def test_unknown_totals_print_a_first_and_a_closing_line(monkeypatch):
    monkeypatch.delenv("TINYVIT_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress_bar(desc="stream", stream=out)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "1000" in lines[-1]
