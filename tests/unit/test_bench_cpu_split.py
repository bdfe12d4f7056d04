"""bench.cpu_split's reading of `perf report --sort pid,dso -n --stdio`: parts per pid,
CPU per request."""

from __future__ import annotations

import collections

import pytest

from bench.cpu_split import part, split, table

REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 70K of event 'cpu-clock'
#
# Overhead       Samples  Pid:Command      Shared Object
# ........  ............  ...............  ......................
#
 23.62% | 16761      |   9889:twistd         |libpython3.11.so.1.0
 23.42% | 16619      |   9889:twistd         |[kernel.kallsyms]
 15.91% | 11290      |   9890:studios-connect|[kernel.kallsyms]
  5.01% | 3555       |   9889:twistd         |aa05a0afa9__mypyc.cpython-311-x86_64-linux-gnu.so
  3.82% | 2710       |   9889:twistd         |_rust.abi3.so
  1.62% | 1150       |   9889:twistd         |parser.cpython-311-x86_64-linux-gnu.so
  0.30% | 200        |   9893:Thread-1 (work)|[nf_conntrack]
  0.16% | 116        |   9889:twistd         |[vdso]
  0.13% | 90         |   9889:twistd         |_socket.cpython-311-x86_64-linux-gnu.so
  0.05% | 40         |   9890:studios-connect|ld-linux-x86-64.so.2
  0.01% | 7          |   9890:studios-connect|[unknown]
"""


@pytest.mark.parametrize(("dso", "want"), [
    ("[kernel.kallsyms]", "kernel"),
    ("[vdso]", "kernel"),
    ("[nf_conntrack]", "kernel"),
    ("[vsyscall]", "kernel"),
    ("[unknown]", "[unknown]"),
    ("python3.11", "Python runtime"),
    ("_ssl.cpython-311-x86_64-linux-gnu.so", "OpenSSL"),
    ("libpython3.11.so.1.0", "Python runtime"),
    ("aa05a0afa9__mypyc.cpython-311-x86_64-linux-gnu.so", "compiled project code"),
    ("_rust.abi3.so", "OpenSSL"),
    ("libcrypto.so.3", "OpenSSL"),
    ("parser.cpython-311-x86_64-linux-gnu.so", "llhttp"),
    ("libc.so.6", "libc"),
    ("_cffi_backend.cpython-311-x86_64-linux-gnu.so", "cffi"),
    ("_socket.cpython-311-x86_64-linux-gnu.so", "_socket.cpython-311-x86_64-linux-gnu.so"),
])
def test_each_shared_object_counts_for_its_part(dso: str, want: str) -> None:
    assert part(dso) == want


def test_split_sums_samples_per_process_and_part() -> None:
    # thread 9893 (a comm with a space) belongs to the gateway's process 9889
    got = split(REPORT, {9889: 9889, 9893: 9889, 9890: 9890})
    assert set(got) == {9889, 9890}
    assert got[9889] == {"Python runtime": 16761, "kernel": 16619 + 200 + 116,
                         "compiled project code": 3555, "OpenSSL": 2710, "llhttp": 1150,
                         "_socket.cpython-311-x86_64-linux-gnu.so": 90}
    assert got[9890] == {"kernel": 11290, "ld-linux-x86-64.so.2": 40, "[unknown]": 7}


def test_split_counts_an_unknown_thread_as_its_own() -> None:
    assert split(REPORT)[9893] == {"kernel": 200}


def test_table_gives_share_and_cpu_per_request_and_folds_small_files() -> None:
    samples = collections.Counter({"kernel": 600, "Python runtime": 300, "tiny.so": 3,
                                   "big.so": 95, "tiny2.so": 2})
    # 1,000 samples at 1,000 per second is one CPU second; over 10,000 requests: 100 us
    lines = table(samples, freq=1000, requests=10_000)
    assert [line.split() for line in lines] == [
        ["kernel", "60.0", "%", "60.0", "us/request"],
        ["Python", "runtime", "30.0", "%", "30.0", "us/request"],
        ["big.so", "9.5", "%", "9.5", "us/request"],
        ["other", "0.5", "%", "0.5", "us/request"],
        ["all", "100.0", "%", "100.0", "us/request"],
    ]


def test_table_without_samples_or_requests_says_so() -> None:
    assert table(collections.Counter(), 1000, 10) == ["  (no samples)"]
    assert table(collections.Counter({"kernel": 5}), 1000, 0) == ["  (no samples)"]
