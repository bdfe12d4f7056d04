"""A real Xpra (Debian's, with Xvfb) through gateway and tunnel, in both modes, by its preset.

`studios-connect --tool xpra` with no command: the preset starts `xpra start
:N` on a display of its own with an xterm, its HTML5 client on loopback and its
login off. In path mode the gateway strips ``/_studio/<id>`` (Xpra serves at
``/`` only). Headless Chromium opens the HTML5 client, which draws the xterm
window over its WebSocket; keys typed in the browser run a command in the
xterm (it creates a file in the studio's home and prints a line, seen in the
screenshot). Stopping the studio runs `xpra stop :N`: no Xvfb is left behind.
The Xpra template's change to the HTML5 client (templates/xpra/fix-html5-client) is
applied to a copy of Debian's client here, as the image build applies it: the page is
shown to come back by itself after a gateway restart (both modes), and to stay
disconnected after Xpra's own Disconnect, or when a second tab took the session, until
the person connects again.
CI installs Xpra with scripts/install-studio-tools.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.chromium import Chromium, chromium_path, png_colours
from tests.support.gateway import REPO, GatewayProcess
from tests.support.side_by_side import MODES, side_by_side, studio_per_mode
from tests.support.tool_studio import ToolStudio, tool_studio
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("xpra") is None or shutil.which("Xvfb") is None
                       or shutil.which("xterm") is None,
                       reason="xpra, Xvfb and xterm are not installed (scripts/"
                              "install-studio-tools xpra)"),
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]


@contextmanager
def xpra_studio(tmp: Path, mode: str) -> Iterator[ToolStudio]:
    """The preset's Xpra studio; stopping it runs `xpra stop :N`, and no X server is left."""
    env = {"XDG_RUNTIME_DIR": str(tmp / "runtime")}
    (tmp / "runtime").mkdir(mode=0o700)
    with tool_studio(tmp, "xpra", mode, "", extra_env=env) as studio:
        yield studio
        display = re.search(r"xpra start (:[0-9]+)", studio.client.output())
        assert display, studio.client.output()[-3000:]
        server = x_server(display.group(1))
        studio.client.stop()  # SIGTERM: the preset runs `xpra stop :N` first
        out = studio.client.log_path.read_text(errors="replace")
        assert f"stopping Xpra: xpra stop {display.group(1)}" in out, out[-3000:]
        assert not running(server), "the X server outlived the studio"
        assert x_server(display.group(1), missing_ok=True) != server, \
            "the X server left its lock file behind"


def x_server(display: str, missing_ok: bool = False) -> int | None:
    """The pid of the X server on `display` (":N"), from its lock file. (By its pid, not
    by the display's socket: once the studio's server is gone, another test run's may take
    the same number at once.)"""
    lock = Path(f"/tmp/.X{display[1:]}-lock")
    try:
        return int(lock.read_text().split()[0])
    except FileNotFoundError:
        assert missing_ok, f"no X server on {display} ({lock} is missing)"
        return None


def running(pid: int | None) -> bool:
    """The process lives (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


xpras, xpra = studio_per_mode("xpra", xpra_studio)


DEBIAN_CLIENT = Path("/usr/share/xpra/www")  # Debian's HTML5 client, which the template ships
FIX_CLIENT = REPO / "templates" / "xpra" / "fix-html5-client"
#: The session is on the page: the xterm's window drawn, the client connected.
SHOWN = ("typeof client !== 'undefined' && client.connected && "
         "!!document.querySelector('div.window canvas') && "
         "document.querySelector('div.window canvas').width > 100")


def template_client(tmp: Path) -> Path:
    """A copy of Debian's HTML5 client (its links to jQuery resolved) changed by the Xpra
    template's fix-html5-client, as the image build changes it; with Xpra's headers next
    to it (it reads <www>/../http-headers). Served by `xpra start --html=<dir>`."""
    root = tmp / "xpra-client"
    shutil.copytree(DEBIAN_CLIENT, root / "www")
    shutil.copytree(DEBIAN_CLIENT.parent / "http-headers", root / "http-headers")
    done = subprocess.run([sys.executable, str(FIX_CLIENT), str(root / "www")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return root / "www"


#: Run by Chromium in every document the tab loads: counts the page's loads (in the tab's
#: session storage, which a reload keeps).
COUNT_LOADS = ("sessionStorage.setItem('test-page-loads', "
               "String(Number(sessionStorage.getItem('test-page-loads') || 0) + 1))")
#: The line the template's change shows over the page.
LINE = "(document.getElementById('studio-reconnect') || {}).textContent"
#: What it says when another tab or browser took the session.
ELSEWHERE = "This session was opened in another tab or browser"


def page_loads(browser: Chromium, session: str | None = None) -> int:
    return int(browser.evaluate("sessionStorage.getItem('test-page-loads')", session) or 0)


def stays_disconnected_saying(browser: Chromium, words: str, still: Callable[[], None]
                              ) -> None:
    """The template's line over the page says `words`, the client is not connected, and
    `still` holds (its asserts pass) for 6 s, 3 of the page's 2 s check periods."""
    line = browser.wait_for(LINE, timeout=20)
    assert words in line, line
    assert browser.evaluate("client.connected") is False
    start = time.monotonic()
    while time.monotonic() - start < 6:
        still()
        time.sleep(0.25)


def template_client_studio(tmp: Path, mode: str) -> AbstractContextManager[ToolStudio]:
    """An Xpra studio (an xterm) whose HTML5 client is the template's (template_client)."""
    www = template_client(tmp)
    (tmp / "runtime").mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(tmp / "runtime")}
    return tool_studio(tmp, "xpra", mode, "", extra_env=env,
                       command=["xpra", "start", f"--html={www}", "--start=xterm"])


@pytest.fixture(scope="module")
def template_studios(tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[dict[str, ToolStudio]]:
    """A studio with the template's client for each mode, started side by side (the
    restart test's in subdomain mode, the Disconnect test's in path mode)."""
    with side_by_side({mode: lambda mode=mode: template_client_studio(
            tmp_path_factory.mktemp(f"xpra-template-{mode}"), mode) for mode in MODES}
                      ) as studios:
        yield studios


def type_text(browser: Chromium, text: str) -> None:
    """Keys as a person types them (lowercase letters, digits, space, '-', Enter)."""
    for ch in text:
        if ch == "\n":
            key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"}
        elif ch == " ":
            key = {"key": " ", "code": "Space", "windowsVirtualKeyCode": 32, "text": " "}
        elif ch == "-":
            key = {"key": "-", "code": "Minus", "windowsVirtualKeyCode": 189, "text": "-"}
        elif ch.isdigit():
            key = {"key": ch, "code": f"Digit{ch}", "windowsVirtualKeyCode": ord(ch),
                   "text": ch}
        else:
            assert ch.isalpha() and ch.islower(), ch
            key = {"key": ch, "code": f"Key{ch.upper()}",
                   "windowsVirtualKeyCode": ord(ch.upper()), "text": ch}
        browser.call("Input.dispatchKeyEvent", type="keyDown", **key)
        browser.call("Input.dispatchKeyEvent", type="keyUp",
                     **{k: v for k, v in key.items() if k != "text"})


def click(browser: Chromium, x: float, y: float) -> None:
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                     clickCount=1)


def test_the_preset_started_xpra_on_its_own_display_on_loopback(xpra: ToolStudio) -> None:
    out = xpra.client.output()
    assert "xpra preset: starting `xpra start :" in out, out[-3000:]
    assert "--bind-tcp=127.0.0.1:" in out and "--html=on" in out and "--start=xterm" in out
    assert "Xpra is ready" in out
    # Only the preset's start command: not Debian's configured `/etc/X11/Xsession true`,
    # which put an error dialog in the session and then a second terminal.
    wait_until(lambda: "started command 'xterm -xrm XTerm*selectToClipboard:true'"
               in xpra.client.output(),
               "Xpra saying it started the xterm")
    assert "Xsession" not in xpra.client.output(), xpra.client.output()[-3000:]
    page = xpra.browser.get(xpra.url())
    assert page.status == 200 and "<html" in page.text.lower()


def test_the_html5_client_draws_the_xterm_and_typed_keys_run_a_command(xpra: ToolStudio
                                                                        ) -> None:
    marker = xpra.home / f"typed-{xpra.mode}"
    browser = xpra.chromium()
    try:
        browser.call("Page.navigate", url=xpra.url())
        # The xterm's window, drawn on a canvas by the HTML5 client (frames over its WebSocket).
        browser.wait_for("!!document.querySelector('div.window canvas') && "
                         "document.querySelector('div.window canvas').width > 100", timeout=90)
        assert browser.evaluate("location.href").startswith(xpra.base)
        box = browser.evaluate("(() => { const r = document.querySelector('div.window canvas')"
                               ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; "
                               "})()")
        click(browser, box[0] + box[2] / 2, box[1] + box[3] / 2)
        browser.wait_for("!!document.querySelector('div.windowinfocus')", timeout=30)
        type_text(browser, f"cd\ntouch typed-{xpra.mode}\n")
        deadline = time.monotonic() + 60
        while not marker.exists():  # the command really ran in the session's shell
            assert time.monotonic() < deadline, f"{marker} was not created by the typed command"
            time.sleep(0.25)
        # The shell is back at its prompt: a command whose output the screenshot shows.
        type_text(browser, f"echo studio says {6 * 7}\n")
        time.sleep(1)  # let the client draw the echoed line before the screenshot
        png = xpra.screenshot(browser, "xpra")
        # The session's windows: the xterm alone (no Xsession error dialog).
        titles = browser.evaluate("Object.values(client.id_to_window).map(w => w.title)")
        assert titles == ["xterm"], titles
    finally:
        browser.stop()
    assert len(png) > 10_000 and png_colours(png) > 20, (len(png), png_colours(png))
    assert os.path.getsize(marker) == 0


def test_text_copied_in_the_browser_pastes_into_the_xterm_and_back(xpra: ToolStudio,
                                                                    tmp_path: Path) -> None:
    """Copy and paste between the person's browser and the studio's terminal. Xpra's HTML5
    client shares the browser's clipboard with the session's CLIPBOARD selection only, the
    one the preset's xterm selects into and pastes from: text copied in the browser is
    pasted by Shift+Insert (it names a file the typed command makes), and a word
    double-clicked in the xterm is then the browser's clipboard. Before, the xterm used
    PRIMARY: Shift+Insert pasted nothing (`echo` of it printed an empty line)."""
    pasted = f"pasted-from-the-browser-{xpra.mode}"
    browser = xpra.chromium(tmp_path)
    try:
        origin = f"{urlsplit(xpra.base).scheme}://{xpra.host}"
        browser.call("Browser.grantPermissions", origin=origin,
                     permissions=["clipboardReadWrite", "clipboardSanitizedWrite"])
        # The clipboard is the focused page's only; a headless window may have no focus.
        browser.call("Emulation.setFocusEmulationEnabled", enabled=True)
        browser.call("Page.navigate", url=xpra.url())
        browser.wait_for(SHOWN, timeout=90)
        written = browser.evaluate(f"navigator.clipboard.writeText({pasted!r})"
                                   ".then(() => true, e => String(e))", await_promise=True)
        assert written is True, written
        box = browser.evaluate("(() => { const r = document.querySelector('div.window canvas')"
                               ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; "
                               "})()")
        # A click: the client reads the browser's clipboard and hands it to the session (over
        # its WebSocket, ahead of the keys that follow).
        click(browser, box[0] + box[2] / 2, box[1] + box[3] / 2)
        browser.wait_for("!!document.querySelector('div.windowinfocus')", timeout=30)
        browser.wait_for(f"client.clipboard_buffer === {pasted!r}", timeout=30)
        # The paste is a round trip (the xterm asks the session's CLIPBOARD, which asks the
        # page): Enter goes once the page has sent what it holds, ahead of the key.
        browser.evaluate("client.send_clipboard_string = (send => function(...a) { "
                         "window.test_sent = a[2]; return send.apply(this, a); })"
                         "(client.send_clipboard_string)")
        type_text(browser, "cd\ntouch ")
        shift_insert = {"key": "Insert", "code": "Insert", "windowsVirtualKeyCode": 45,
                        "modifiers": 8}
        browser.call("Input.dispatchKeyEvent", type="keyDown", **shift_insert)
        browser.call("Input.dispatchKeyEvent", type="keyUp", **shift_insert)
        browser.wait_for(f"window.test_sent === {pasted!r}", timeout=30)
        type_text(browser, "\n")
        wait_until((xpra.home / pasted).exists, f"the xterm making {pasted} from the paste")

        type_text(browser, "clear\necho xtermword\n")
        # xterm's default font is 13 px high: the word is the second line's first. Clicked
        # again until the browser's clipboard holds it (the line is drawn a moment later).
        word = {"x": box[0] + 25, "y": box[1] + 2 + 13 * 1.5, "button": "left"}

        def double_clicked() -> bool:
            for count in (1, 2):
                for kind in ("mousePressed", "mouseReleased"):
                    browser.call("Input.dispatchMouseEvent", type=kind, clickCount=count, **word)
            return bool(browser.evaluate("navigator.clipboard.readText().then(t => t)",
                                         await_promise=True) == "xtermword")

        wait_until(double_clicked, "the word selected in the xterm as the browser's clipboard",
                   timeout=30)
    finally:
        browser.stop()


def test_a_command_of_ones_own_runs_inside_xpra_and_ends_the_studio_with_it(
        tmp_path: Path) -> None:
    """`studios-connect --tool xpra -- PROGRAM`: the preset wraps the program in an Xpra
    session (subdomain mode) and says so in one line; when the program exits, so do the
    session and the studio, with status 0, leaving nothing behind."""
    (tmp_path / "runtime").mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "runtime")}
    home = tmp_path / "home"
    program = ["sh", "-c", f"touch {home}/running; while [ ! -e {home}/stop ]; do sleep 0.2; done"]
    with tool_studio(tmp_path, "xpra", "subdomain", "", extra_env=env,
                     command=program) as studio:
        lines = [line for line in studio.client.output().splitlines() if "xpra preset:" in line]
        assert len(lines) == 1, lines
        assert "xpra preset: your command runs inside Xpra: `xpra start :" in lines[0]
        assert "--exit-with-children=yes" in lines[0] and "'--start-child=sh -c " in lines[0]
        assert studio.browser.get(studio.url()).status == 200
        deadline = time.monotonic() + 60
        while not (home / "running").exists():  # Xpra started the program
            assert time.monotonic() < deadline, studio.client.output()[-3000:]
            time.sleep(0.25)
        (home / "stop").touch()  # the program ends: the session and the studio end
        studio.client.proc.wait(timeout=60)
        assert studio.client.proc.returncode == 0, studio.client.output()[-3000:]


@pytest.mark.skipif(not (DEBIAN_CLIENT / "index.html").exists(),
                    reason="Debian's Xpra HTML5 client is not in /usr/share/xpra/www")
def test_the_templates_client_comes_back_by_itself_after_a_gateway_restart(
        template_studios: dict[str, ToolStudio], tmp_path: Path) -> None:
    """The gateway restarts under an open Xpra page (subdomain mode). With Debian's client
    as it is, the page froze for good (its reconnect fails: `win is not defined`). With the
    template's change it says that the gateway cannot be reached, tries again, reloads once
    the gateway answers (its "Studio not connected" page until the studio has bound again)
    and shows the same session: the xterm where it was."""
    studio = template_studios["subdomain"]
    browser = studio.chromium()
    restarted: GatewayProcess | None = None
    try:
        browser.call("Page.navigate", url=studio.url())
        browser.wait_for(SHOWN, timeout=90)
        studio.gateway.stop()  # SIGTERM: the drain closes the WebSocket (1012)
        line = browser.wait_for("(document.getElementById('studio-reconnect') || {})"
                                ".textContent", timeout=20)
        assert "the gateway cannot be reached" in line, line
        studio.screenshot(browser, "xpra-gateway-away")
        restarted = GatewayProcess(tmp_path, studio.gateway.env, name="gateway2")
        restarted.wait_ready()
        browser.wait_for(SHOWN, timeout=60)  # reloaded, the studio bound again
        assert browser.evaluate("location.href") == studio.url()
        titles = browser.evaluate("Object.values(client.id_to_window).map(w => w.title)")
        assert titles == ["xterm"], titles
        time.sleep(1)  # let the client draw the window before the screenshot
        png = studio.screenshot(browser, "xpra-back")
        assert studio.client.proc.poll() is None  # the same studio and Xpra session
    finally:
        browser.stop()
        if restarted is not None:
            restarted.stop()
    assert png_colours(png) > 20


@pytest.mark.skipif(not (DEBIAN_CLIENT / "index.html").exists(),
                    reason="Debian's Xpra HTML5 client is not in /usr/share/xpra/www")
def test_the_templates_client_stays_disconnected_after_xpras_own_disconnect(
        template_studios: dict[str, ToolStudio], tmp_path: Path) -> None:
    """Path mode, where every studio shares the gateway's origin. The person chooses
    Disconnect in the Xpra page's menu: the page says so, with a "Connect again" button,
    and neither asks for its address nor loads itself again for 3 of its 2 s check periods
    while the gateway answers (before, the template's change took it for a broken
    connection and reloaded at once, connected again). The button brings the session back.
    The page's count of reloads is its own (named after /_studio/<id>/): another studio's
    count in the same tab, used up, stays as it was, and the page still comes back by
    itself after a gateway restart, also from an address with the '#' Xpra's menu adds."""
    studio = template_studios["path"]
    own = f"studio-reconnect-reloads:{studio.prefix}"
    other = "studio-reconnect-reloads:/_studio/other/"  # another studio's, same origin
    count = f"sessionStorage.getItem({own!r})"
    # The page's address in the access log, asked for by a reload or the page's check
    # (not the WebSocket's line, status 101, written when it closes).
    asked = re.compile(rf'"GET {re.escape(studio.prefix)}" (?!101 )')
    browser = studio.chromium()
    restarted: GatewayProcess | None = None
    try:
        browser.call("Page.enable")  # (the script is not run without it)
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=COUNT_LOADS)
        browser.call("Page.navigate", url=studio.url())
        browser.wait_for(SHOWN, timeout=90)
        browser.evaluate(f"sessionStorage.setItem({other!r}, '5')")  # used up
        browser.wait_for(f"{count} === '0'", timeout=10)  # set once Xpra's startup is done
        assert page_loads(browser) == 1

        # Xpra's menu (its top-left button), then Disconnect, clicked as a person does.
        box = "(e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, " \
              "r.height]; })"
        menu = browser.evaluate(f"{box}(document.querySelector('a[title=Xpra]'))")
        click(browser, menu[0] + menu[2] / 2, menu[1] + menu[3] / 2)
        item = "Array.from(document.querySelectorAll('#menu_list > li > a'))" \
               ".find(a => a.textContent.trim() === 'Disconnect')"
        browser.wait_for(f"{item}.getBoundingClientRect().width > 0", timeout=10)
        item_box = browser.evaluate(f"{box}({item})")
        before = len(asked.findall(studio.gateway.output()))
        click(browser, item_box[0] + item_box[2] / 2, item_box[1] + item_box[3] / 2)

        # While the gateway answers, 3 check periods pass with no request for the page and
        # no reload: the first check of a broken connection comes at once.
        def still() -> None:
            assert page_loads(browser) == 1
            assert len(asked.findall(studio.gateway.output())) == before

        stays_disconnected_saying(browser, "You disconnected from this session", still)
        assert studio.browser.get(studio.url("js/Client.js")).status == 200
        assert browser.evaluate(count) == "0"
        png = studio.screenshot(browser, "xpra-disconnected")
        assert png_colours(png) > 5

        again = browser.evaluate(f"{box}(document.getElementById("
                                 "'studio-reconnect-again'))")
        click(browser, again[0] + again[2] / 2, again[1] + again[3] / 2)
        browser.wait_for(SHOWN, timeout=60)
        assert page_loads(browser) == 2
        assert browser.evaluate("location.href") == studio.url()  # without the menu's '#'

        # A broken connection still reloads, counted under this studio's key only; from
        # an address with the '#' the menu adds, which the gateway's "Studio not
        # connected" page (a meta refresh) did not reload in Chromium.
        click(browser, menu[0] + menu[2] / 2, menu[1] + menu[3] / 2)
        assert browser.evaluate("location.href") == studio.url() + "#"
        studio.gateway.stop()  # SIGTERM: the drain closes the WebSocket (1012)
        line = browser.wait_for(LINE, timeout=20)
        assert "the gateway cannot be reached" in line, line
        assert browser.evaluate(count) == "1"
        restarted = GatewayProcess(tmp_path, studio.gateway.env, name="gateway2")
        restarted.wait_ready()
        browser.wait_for(SHOWN, timeout=60)  # reloaded, the studio bound again
        browser.wait_for(f"{count} === '0'", timeout=10)
        assert browser.evaluate(f"sessionStorage.getItem({other!r})") == "5"
        assert browser.evaluate("location.href") == studio.url()
        assert studio.client.proc.poll() is None  # the same studio and Xpra session
        time.sleep(1)  # let the client draw the window before the screenshot
        assert png_colours(studio.screenshot(browser, "xpra-back")) > 20
    finally:
        browser.stop()
        if restarted is not None:
            restarted.stop()


@pytest.mark.skipif(not (DEBIAN_CLIENT / "index.html").exists(),
                    reason="Debian's Xpra HTML5 client is not in /usr/share/xpra/www")
def test_the_templates_client_leaves_the_session_to_a_second_tab(tmp_path: Path) -> None:
    """The person opens the studio in a second tab (subdomain mode). Xpra shows a session in
    one place at a time: it gives the session to the new tab and ends the first tab's
    connection ("new client"). The first page says so, with a "Connect again" button, and
    neither tab reloads while the other holds the session. Before, the first page took that
    end for a broken connection and reloaded, took the session back, the second did the
    same, and the two took turns for ever (each reloading every 3 s: 9 loads in 27 s, the
    count of 5 reloads starting again each time the session was shown). Connect again
    takes the session back; the second tab then says the same."""
    with template_client_studio(tmp_path, "subdomain") as studio:
        browser = studio.chromium()
        try:
            browser.call("Page.enable")  # (the script is not run without it)
            browser.call("Page.addScriptToEvaluateOnNewDocument", source=COUNT_LOADS)
            browser.call("Page.navigate", url=studio.url())
            browser.wait_for(SHOWN, timeout=90)
            second = browser.open_tab("about:blank")
            browser.call("Page.enable", second)
            browser.call("Page.addScriptToEvaluateOnNewDocument", second, source=COUNT_LOADS)
            browser.call("Page.navigate", second, url=studio.url())
            browser.wait_for(SHOWN, timeout=60, session=second)

            # Longer than a turn took (3 s): nobody reloads, the second tab keeps the session.
            def still() -> None:
                assert page_loads(browser) == 1 and page_loads(browser, second) == 1
                assert browser.evaluate(SHOWN, second) is True

            stays_disconnected_saying(browser, ELSEWHERE, still)

            browser.call("Page.bringToFront")
            png = studio.screenshot(browser, "xpra-opened-elsewhere")
            box = browser.evaluate("(e => { const r = e.getBoundingClientRect(); return "
                                   "[r.x, r.y, r.width, r.height]; })(document."
                                   "getElementById('studio-reconnect-again'))")
            click(browser, box[0] + box[2] / 2, box[1] + box[3] / 2)
            browser.wait_for(SHOWN, timeout=60)
            assert page_loads(browser) == 2
            line = browser.wait_for(LINE, timeout=20, session=second)
            assert ELSEWHERE in line, line
            assert page_loads(browser, second) == 1
            assert studio.client.proc.poll() is None  # the same studio and Xpra session
        finally:
            browser.stop()
        assert png_colours(png) > 5
