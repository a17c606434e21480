"""Hostile submissions for tests/test_grade.py: the cells a learner could write to forge a grade, escape the
fence, outlive the batch or stop it.  Each is prepended to the untouched exercise's first graded cell (the data
part), so the rest of the notebook fails fast and only the attack costs time.

Each attack records what happened to each attempt in ``attempts.json`` in its scratch folder ("done" when it
got through, else the error); the test reads that file and the world outside after the batch.  ``NEEDS`` says
which fence mechanism stops an attempt where the audit hook alone does not, so the test asks only what the
machine can give (and says which mechanisms it found).
"""
from __future__ import annotations

#: Defines attempt() and save(); the test puts the paths and ports it uses in front of it.
PRELUDE = '''
import json, os
results = {}
def attempt(name, fn):
    try:
        fn()
        results[name] = "done"
    except BaseException as e:
        results[name] = f"{type(e).__name__}: {e}"[:300]
def save():
    with open("attempts.json", "w") as f:
        json.dump(results, f)
def fails(message):
    raise OSError(message)
'''

#: Writes outside the scratch folder, by the routes an audit hook does not see (item 2 of the issue).
WRITER = '''
import ctypes, sqlite3, torch
fd = os.open(OUTSIDE, os.O_PATH)  # O_PATH: even where reading the folder is refused
attempt("dir_fd open", lambda: os.close(os.open("w_dirfd.txt", os.O_CREAT | os.O_WRONLY, dir_fd=fd)))
attempt("dir_fd unlink", lambda: os.unlink("canary.txt", dir_fd=fd))
attempt("dir_fd rename", lambda: os.rename("canary.txt", "w_moved.txt", src_dir_fd=fd, dst_dir_fd=fd))
attempt("dir_fd symlink", lambda: os.symlink("/etc/hostname", "w_link", dir_fd=fd))
attempt("mkfifo", lambda: os.mkfifo(os.path.join(OUTSIDE, "w_fifo")))
attempt("mknod", lambda: os.mknod(os.path.join(OUTSIDE, "w_node")))
attempt("sqlite", lambda: sqlite3.connect(os.path.join(OUTSIDE, "w.db")).execute("create table t (x)"))
attempt("torch from_file", lambda: torch.UntypedStorage.from_file(os.path.join(OUTSIDE, "w_storage"), True, 64))
attempt("torch.jit.save", lambda: torch.jit.save(torch.jit.script(torch.nn.Linear(1, 1)),
                                                 os.path.join(OUTSIDE, "w_jit.pt")))
attempt("ctypes fopen", lambda: ctypes.CDLL(None).fopen(os.path.join(OUTSIDE, "w_c").encode(), b"w")
        or fails("fopen returned NULL"))
attempt("ctypes system", lambda: ctypes.CDLL(None).system(f"touch {OUTSIDE}/w_sh".encode()) == 0
        or fails("system failed"))
attempt("other learner's scratch", lambda: open(os.path.join(OTHER, "submission.ipynb"), "a").write("x"))
attempt("the gradebook", lambda: open(os.path.join(OUT, "gradebook.csv"), "a").write("x,10\\n"))
save()
'''

#: Reads of what is not the learner's, and the network (item 2).
READER = '''
import socket
attempt("read another submission", lambda: open(os.path.join(OTHER, "submission.ipynb")).read())
attempt("list the submissions", lambda: os.listdir(SUBMISSIONS))
attempt("grader's command line", lambda: open(f"/proc/{os.getppid()}/cmdline").read() or fails("empty"))
attempt("grader's environment", lambda: open(f"/proc/{os.getppid()}/environ").read() or fails("empty"))
attempt("the gradebook", lambda: open(os.path.join(OUT, "gradebook.csv")).read())
attempt("the solution notebook", lambda: open(os.path.join(PROJECT, "face_generation.ipynb")).read())
attempt("tcp connect", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=3).close())
attempt("udp send", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", UDP_PORT)))
save()
'''

#: Processes that try to outlive the submission, and a fork bomb (item 3).
FORKER = '''
import time
pids = []
for i in range(20):
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    pids.append(pid)
worker = os.getpid()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # its parent exits at once: an orphan in a session of its own
        with open("pids.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")
        while os.path.exists(f"/proc/{worker}/stat") and "Z" not in open(f"/proc/{worker}/stat").read().split()[2]:
            time.sleep(0.05)  # wait for the submission's worker to end
        time.sleep(3)  # then write: it must not live that long
        open("late.txt", "w").write("outlived the submission by 3 s")
    os._exit(0)
forks = 0
try:
    for forks in range(1, 1001):
        if os.fork() == 0:
            time.sleep(3600)
            os._exit(0)
except OSError as e:
    results["fork bomb stopped"] = f"{type(e).__name__} after {forks - 1} forks"
results["forks"] = forks
with open("pids.txt", "a") as f:
    f.write("".join(f"{p}\\n" for p in pids))
save()
'''

#: Forked children that together hold more than the submission's memory cap (item 3).
HOG = '''
import time
children = []
for i in range(8):
    pid = os.fork()
    if pid == 0:
        block = bytearray(2**30)
        block[::4096] = b"\\1" * (2**30 // 4096)  # touch every page: resident, not just reserved
        open(f"held_{i}", "w").close()
        time.sleep(3600)
        os._exit(0)
    children.append(pid)
status = {}
deadline = time.time() + 90
while len(status) < len(children) and time.time() < deadline:  # each child holds its GiB, or was stopped
    for i, pid in enumerate(children):
        if status.get(pid, "holding").startswith(("signal", "exit")):
            continue  # reaped already
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status[pid] = f"signal {os.WTERMSIG(code)}" if os.WIFSIGNALED(code) else f"exit {os.WEXITSTATUS(code)}"
        elif os.path.exists(f"held_{i}"):
            status[pid] = "holding 1 GiB"
    time.sleep(0.2)
results.update({str(k): v for k, v in status.items()})
save()
'''

#: The grader's own state: a learner that deletes its folder (item 4).
RMTREE = '''
import shutil
shutil.rmtree(os.getcwd())
'''

#: Stops the grader itself (item 4): only run where Landlock scopes signals (ABI 6).
KILLER = '''
import signal
attempt("kill the grader", lambda: os.kill(os.getppid(), signal.SIGKILL))
save()
'''

#: Status and identity (item 5).
EXITER = "import sys\nsys.exit(0)\n"
OS_EXIT = "os._exit(0)\n"
THREADS = '''
import threading, time
for i in range(200):
    threading.Thread(target=time.sleep, args=(3600,)).start()
'''
LIAR = '''
import sys
for i in range(1000):
    os.write(1, b"ALL PARTS PASSED: 10/10 points, graded by the instructor\\n")
sys.stderr.write("status: graded 10/10\\n")
'''

#: Forged results (item 1): a result file written at exit, and forged records on every open descriptor.
FORGER = '''
import atexit
forged = {"status": "graded", "points": 700, "parts": {"data": {"points": 700, "passed": True, "message": "passed"}}}
atexit.register(lambda: open("result.json", "w").write(json.dumps(forged)))
open("result.json", "w").write(json.dumps(forged))
records = []
for part in PARTS:
    records += [{"kind": "start", "part": part}, {"kind": "part", "part": part, "passed": True, "message": "passed",
                                                  "points": 700}]
records += [{"kind": "training", "status": "trained", "steps": 10**6, "seconds": 1, "d_loss": 0, "g_loss": 0},
            {"kind": "points", "points": 700}]
for fd in map(int, os.listdir("/proc/self/fd")):
    try:
        os.write(fd, "".join(json.dumps(r) + "\\n" for r in records).encode())
    except OSError:
        pass
'''

#: Which mechanism stops each attempt that the audit hook alone lets through.
NEEDS = {"dir_fd open": "landlock", "mkfifo": "landlock", "mknod": "landlock", "torch from_file": "landlock",
         "torch.jit.save": "landlock", "list the submissions": "landlock", "grader's command line": "landlock",
         "grader's environment": "landlock", "the solution notebook": "landlock", "tcp connect": "landlock-or-netns",
         "udp send": "netns", "kill the grader": "landlock6"}
