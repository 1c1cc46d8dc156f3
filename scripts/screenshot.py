import subprocess, os, json, time, base64, sys, tempfile, select
url, out = sys.argv[1], sys.argv[2]
wait = float(sys.argv[3]) if len(sys.argv) > 3 else 6
click = sys.argv[4] if len(sys.argv) > 4 else None
r1, w1 = os.pipe(); r2, w2 = os.pipe()
def pre():
    a = os.dup(r1); b = os.dup(w2); os.dup2(a, 3); os.dup2(b, 4)
p = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir=" + tempfile.mkdtemp(),
    "--remote-debugging-pipe", "--window-size=1280,900"], preexec_fn=pre, pass_fds=(3, 4) if False else (),
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False)
os.close(r1); os.close(w2)
buf = b""; nid = [0]
def send(method, params=None, session=None):
    nid[0] += 1
    m = {"id": nid[0], "method": method, "params": params or {}}
    if session: m["sessionId"] = session
    os.write(w1, json.dumps(m).encode() + b"\0")
    return recv(nid[0])
def recv(i):
    global buf
    deadline = time.time() + 30
    while time.time() < deadline:
        while b"\0" in buf:
            msg, buf = buf.split(b"\0", 1)
            m = json.loads(msg)
            if m.get("id") == i: return m
        rl, _, _ = select.select([r2], [], [], 1)
        if rl: buf += os.read(r2, 1 << 20)
    raise SystemExit("no answer to %d" % i)
r = send("Target.createTarget", {"url": url}); print(r); t = r["result"]["targetId"]
s = send("Target.attachToTarget", {"targetId": t, "flatten": True})["result"]["sessionId"]
send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, s)
time.sleep(wait)
if click:
    print(send("Runtime.evaluate", {"expression": click, "returnByValue": True}, s).get("result"))
    time.sleep(4)
d = send("Page.captureScreenshot", {"format": "png"}, s)["result"]["data"]
open(out, "wb").write(base64.b64decode(d))
print("ok", out)
p.kill()
