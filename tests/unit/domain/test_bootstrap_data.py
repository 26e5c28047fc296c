"""Reading the cloud-config the kubeadm bootstrap provider (CABPK) renders, as cloud-init reads it."""

from __future__ import annotations

import base64
import gzip
import io
import shlex
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml import YAML

from lattice.domain.bootstrap_data import (
    BootstrapData,
    BootstrapDataError,
    File,
    KubeadmStep,
    kubeadm_documents,
    kubeadm_step,
    parse_cloud_config,
)

CA = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIC6jCCAdKgAwIBAgIBADANBgkqhkiG9w0BAQsFADAVMRMwEQYDVQQDEwprdWJl\n"
    "-----END CERTIFICATE-----\n"
)
INIT = (
    "kubeadm init --config /run/kubeadm/kubeadm.yaml  "
    "&& echo success > /run/cluster-api/bootstrap-success.complete"
)
JOIN = (
    "kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml  "
    "&& echo success > /run/cluster-api/bootstrap-success.complete"
)
SUCCESS = "/run/cluster-api/bootstrap-success.complete"

# What CABPK renders for a first control-plane machine (shortened certificate).
CABPK_INIT = f"""\
## template: jinja
#cloud-config

write_files:
-   path: /etc/kubernetes/pki/ca.crt
    owner: root:root
    permissions: '0640'
    content: |
      -----BEGIN CERTIFICATE-----
      MIIC6jCCAdKgAwIBAgIBADANBgkqhkiG9w0BAQsFADAVMRMwEQYDVQQDEwprdWJl
      -----END CERTIFICATE-----
-   path: /run/kubeadm/kubeadm.yaml
    owner: root:root
    permissions: '0640'
    content: |
      ---
      apiVersion: kubeadm.k8s.io/v1beta4
      kind: ClusterConfiguration
      clusterName: real
      ---
      apiVersion: kubeadm.k8s.io/v1beta4
      kind: InitConfiguration
runcmd:
  - '{INIT}'
  - "echo hello"
"""

# What CABPK renders for a joining machine: the kubeadm command is not quoted.
CABPK_JOIN = f"""\
## template: jinja
#cloud-config

write_files:
-   path: /run/kubeadm/kubeadm-join-config.yaml
    owner: root:root
    permissions: '0640'
    content: |
      ---
      apiVersion: kubeadm.k8s.io/v1beta4
      kind: JoinConfiguration
      nodeRegistration:
        kubeletExtraArgs:
        - name: node-labels
          value: pool=md-0
-   path: /run/cluster-api/placeholder
    owner: root:root
    permissions: '0640'
    content: "This placeholder file is used to create the /run/cluster-api sub directory"
runcmd:
  - {JOIN}
"""


def dump(data: Any) -> str:
    """A cloud-config as a YAML emitter writes it, with the header cloud-init requires."""
    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, out)
    return "#cloud-config\n" + out.getvalue()


def quoted(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that escapes everything but printable ASCII, so that
    any string (line separators, control characters, astral code points) reads back exactly."""
    escaped = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else f"\\U{ord(ch):08x}" for ch in text)
    return f'"{escaped}"'


def one_file(**entry: Any) -> File:
    data = parse_cloud_config(dump({"write_files": [{"path": "/etc/x", **entry}]}))
    assert len(data.files) == 1
    return data.files[0]


def problems_of(text: str) -> str:
    with pytest.raises(BootstrapDataError) as info:
        parse_cloud_config(text)
    return str(info.value)


# -- parse_cloud_config: what CABPK renders --------------------------------------------------------


def test_cabpk_init_data() -> None:
    data = parse_cloud_config(CABPK_INIT)
    assert [f.path for f in data.files] == ["/etc/kubernetes/pki/ca.crt", "/run/kubeadm/kubeadm.yaml"]
    ca = data.files[0]
    assert ca == File(
        path="/etc/kubernetes/pki/ca.crt",
        content=CA.encode(),
        permissions=0o640,
        owner="root:root",
        append=False,
    )
    assert data.commands == (INIT, "echo hello")
    step = kubeadm_step(data.commands[0])
    assert step == KubeadmStep(phase="init", config_path="/run/kubeadm/kubeadm.yaml", success_path=SUCCESS)
    assert kubeadm_step(data.commands[1]) is None
    config = data.file(step.config_path)
    assert config is not None
    docs = kubeadm_documents(config.content)
    assert list(docs) == ["ClusterConfiguration", "InitConfiguration"]
    assert docs["ClusterConfiguration"]["clusterName"] == "real"


def test_cabpk_join_data() -> None:
    data = parse_cloud_config(CABPK_JOIN)
    assert data.commands == (JOIN,)
    step = kubeadm_step(data.commands[0])
    assert step == KubeadmStep(
        phase="join", config_path="/run/kubeadm/kubeadm-join-config.yaml", success_path=SUCCESS
    )
    config = data.file(step.config_path)
    assert config is not None
    join = kubeadm_documents(config.content)["JoinConfiguration"]
    assert join["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-labels", "value": "pool=md-0"}]
    placeholder = data.file("/run/cluster-api/placeholder")
    assert placeholder is not None
    assert placeholder.content.startswith(b"This placeholder file")


def test_file_looks_up_by_exact_path_and_returns_the_first() -> None:
    first = File(path="/a", content=b"1", permissions=0o644, owner="root:root", append=False)
    second = File(path="/a", content=b"2", permissions=0o644, owner="root:root", append=True)
    data = BootstrapData(files=(first, second), commands=())
    assert data.file("/a") is first
    assert data.file("/a/") is None
    assert data.file("/b") is None
    assert BootstrapData(files=(), commands=()).file("/a") is None


def test_header_may_be_the_first_line_and_carry_blanks() -> None:
    data = parse_cloud_config("  #cloud-config  \nruncmd: [ls]\n")
    assert data.commands == ("ls",)


def test_empty_cloud_config_is_empty_data() -> None:
    assert parse_cloud_config("#cloud-config\n{}\n") == BootstrapData(files=(), commands=())
    assert parse_cloud_config("#cloud-config\nwrite_files:\nruncmd:\n") == BootstrapData(
        files=(), commands=()
    )


# -- write_files -----------------------------------------------------------------------------------


def test_file_defaults() -> None:
    assert one_file() == File(path="/etc/x", content=b"", permissions=0o644, owner="root:root", append=False)


def test_file_attributes() -> None:
    f = one_file(content="hi\n", permissions="0600", owner="kube:kube", append=True)
    assert f == File(path="/etc/x", content=b"hi\n", permissions=0o600, owner="kube:kube", append=True)


def test_plain_content_is_utf8() -> None:
    assert one_file(content="ünïcode ✓").content == "ünïcode ✓".encode()


@pytest.mark.parametrize("encoding", ["base64", "b64", "BASE64", "B64"])
def test_base64_content(encoding: str) -> None:
    payload = b"\x00\x01binary\xff"
    f = one_file(encoding=encoding, content=base64.b64encode(payload).decode())
    assert f.content == payload


def test_base64_content_ignores_line_breaks() -> None:
    """Long base64 content is often wrapped; characters outside the alphabet are discarded."""
    payload = bytes(range(256)) * 3
    encoded = base64.encodebytes(payload).decode()
    assert "\n" in encoded.strip()
    assert one_file(encoding="base64", content=encoded).content == payload


@pytest.mark.parametrize("encoding", ["gzip+base64", "gz+base64", "gzip+b64", "gz+b64", "GZIP+BASE64"])
def test_gzip_base64_content(encoding: str) -> None:
    payload = b"apiVersion: v1\nkind: Config\n" * 50
    f = one_file(encoding=encoding, content=base64.b64encode(gzip.compress(payload, mtime=0)).decode())
    assert f.content == payload


@pytest.mark.parametrize(
    ("permissions", "mode"),
    [("0640", 0o640), ("0755", 0o755), ("600", 0o600), ("0o750", 0o750), ("4755", 0o4755), ("0", 0)],
)
def test_permissions_are_octal(permissions: str, mode: int) -> None:
    assert one_file(permissions=permissions).permissions == mode


def test_unquoted_permissions_read_as_their_octal_digits() -> None:
    """YAML 1.2 reads an unquoted ``0640`` as the integer 640; its digits are the octal mode."""
    text = "#cloud-config\nwrite_files:\n- path: /etc/x\n  permissions: 0640\n"
    assert parse_cloud_config(text).files[0].permissions == 0o640


def test_append_is_kept() -> None:
    text = (
        "#cloud-config\nwrite_files:\n"
        "- {path: /etc/x, content: a}\n"
        "- {path: /etc/x, content: b, append: true}\n"
    )
    data = parse_cloud_config(text)
    assert [(f.content, f.append) for f in data.files] == [(b"a", False), (b"b", True)]


def test_files_keep_their_order() -> None:
    paths = [f"/etc/f{i}" for i in range(10, 0, -1)]
    data = parse_cloud_config(dump({"write_files": [{"path": p} for p in paths]}))
    assert [f.path for f in data.files] == paths


@given(
    files=st.lists(
        st.tuples(st.text(min_size=1).map(lambda s: "/" + s), st.binary()),
        max_size=5,
        unique_by=lambda t: t[0],
    )
)
def test_base64_content_round_trips(files: list[tuple[str, bytes]]) -> None:
    entries = "".join(
        f"- path: {quoted(path)}\n  encoding: base64\n"
        f"  content: {quoted(base64.b64encode(content).decode())}\n"
        for path, content in files
    )
    data = parse_cloud_config(f"## template: jinja\n#cloud-config\nwrite_files:\n{entries}")
    assert [(f.path, f.content) for f in data.files] == files
    for path, content in files:
        found = data.file(path)
        assert found is not None
        assert found.content == content


@given(content=st.binary())
def test_gzip_base64_content_round_trips(content: bytes) -> None:
    encoded = base64.b64encode(gzip.compress(content, mtime=0)).decode()
    assert one_file(encoding="gzip+base64", content=encoded).content == content


# -- runcmd ----------------------------------------------------------------------------------------


def test_commands_keep_their_order_and_text() -> None:
    text = dump({"runcmd": ["echo one", "  spaced  out  ", INIT, "echo 'quoted' && true"]})
    assert parse_cloud_config(text).commands == ("echo one", "  spaced  out  ", INIT, "echo 'quoted' && true")


def test_list_commands_become_shell_words() -> None:
    text = dump(
        {
            "runcmd": [
                ["ls", "-l", "/etc/kubernetes"],
                ["sh", "-c", "echo $HOME && true"],
                ["echo", "it's", ""],
                ["env", "A=b:c@d%e+f,g"],
                [],
            ]
        }
    )
    assert parse_cloud_config(text).commands == (
        "ls -l /etc/kubernetes",
        "sh -c 'echo $HOME && true'",
        "echo 'it'\"'\"'s' ''",
        "env 'A=b:c@d%e+f,g'",
        "",
    )


@given(argv=st.lists(st.text(), min_size=1, max_size=6))
def test_list_commands_split_back_to_their_words(argv: list[str]) -> None:
    """A list entry runs as that argv: the shell words it becomes split back to the same list."""
    words = ", ".join(quoted(word) for word in argv)
    (command,) = parse_cloud_config(f"#cloud-config\nruncmd:\n- [{words}]\n").commands
    assert shlex.split(command) == argv


# -- every problem, named --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "write_files: []\n",
        "\n\n#cloud-config\n",
        "## template: jinja\n\n#cloud-config\n",
        "#cloud-config-archive\n",
        "",
    ],
)
def test_missing_header(text: str) -> None:
    assert "not a cloud-config" in problems_of(text)


def test_invalid_yaml() -> None:
    message = problems_of("#cloud-config\nwrite_files: [\n")
    assert message.startswith("the cloud-config is not valid YAML: ")


@pytest.mark.parametrize("body", ["- a\n- b\n", "just text\n", "42\n", ""])
def test_not_a_mapping(body: str) -> None:
    assert problems_of("#cloud-config\n" + body) == "the cloud-config is not a mapping"


def test_unsupported_modules_are_named_sorted() -> None:
    message = problems_of(dump({"packages": ["jq"], "bootcmd": ["true"], "runcmd": ["true"]}))
    assert message == "unsupported cloud-init modules: bootcmd, packages"


def test_unsupported_modules_with_keys_that_are_not_strings() -> None:
    """YAML keys may be numbers or null: still a named problem, not a crash."""
    message = problems_of("#cloud-config\n1: a\nusers: []\n~: b\n")
    assert message.startswith("unsupported cloud-init modules: ")
    for name in ("1", "users", "None"):
        assert name in message


@pytest.mark.parametrize("value", ["'a string'", "{path: /a}", "42", "true"])
def test_write_files_not_a_list(value: str) -> None:
    assert problems_of(f"#cloud-config\nwrite_files: {value}\n") == "write_files: not a list"


@pytest.mark.parametrize("value", ["'echo hi'", "{a: b}", "42", "true"])
def test_runcmd_not_a_list(value: str) -> None:
    assert problems_of(f"#cloud-config\nruncmd: {value}\n") == "runcmd: not a list"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("[/a]", "write_files[0]: not a mapping"),
        ("/a", "write_files[0]: not a mapping"),
        ("{content: x}", "write_files[0].path: must be an absolute path, got None"),
        ("{path: etc/x}", "write_files[0].path: must be an absolute path, got 'etc/x'"),
        ("{path: ''}", "write_files[0].path: must be an absolute path, got ''"),
        ("{path: 7}", "write_files[0].path: must be an absolute path, got 7"),
        ("{path: /a, encoding: zstd}", "write_files[0].encoding: unknown encoding 'zstd' for /a"),
        ("{path: /a, encoding: base32}", "write_files[0].encoding: unknown encoding 'base32' for /a"),
        ("{path: /a, permissions: rw-r--r--}", "write_files[0].permissions: not an octal mode: 'rw-r--r--'"),
        ("{path: /a, permissions: '0849'}", "write_files[0].permissions: not an octal mode: '0849'"),
        ("{path: /a, permissions: '0x1ff'}", "write_files[0].permissions: not an octal mode: '0x1ff'"),
        ("{path: /a, permissions: true}", "write_files[0].permissions: not an octal mode: 'True'"),
    ],
)
def test_bad_file_entry(entry: str, problem: str) -> None:
    assert problems_of(f"#cloud-config\nwrite_files:\n- {entry}\n") == problem


@pytest.mark.parametrize(
    ("encoding", "content"),
    [
        ("base64", "abcde"),  # a length no padding can fix
        ("gzip+base64", base64.b64encode(b"not gzip at all").decode()),  # not a gzip stream
        ("gzip+base64", base64.b64encode(gzip.compress(b"x" * 100, mtime=0)[:20]).decode()),  # truncated
        ("gzip+base64", "abcde"),  # not even base64
        ("gzip", "plain text"),  # gzip alone needs binary content
    ],
)
def test_undecodable_content(encoding: str, content: str) -> None:
    message = problems_of(dump({"write_files": [{"path": "/a", "encoding": encoding, "content": content}]}))
    assert message.startswith(f"write_files[0].content: cannot decode {encoding} content of /a: ")


def test_corrupt_gzip_stream_is_a_named_problem() -> None:
    """A gzip header followed by an invalid deflate stream (``zlib.error``) is reported like any
    other undecodable content."""
    good = gzip.compress(b"hello world" * 10, mtime=0)
    corrupt = good[:10] + b"\xff" * (len(good) - 18) + good[-8:]
    content = base64.b64encode(corrupt).decode()
    message = problems_of(
        dump({"write_files": [{"path": "/a", "encoding": "gzip+base64", "content": content}]})
    )
    assert message.startswith("write_files[0].content: cannot decode gzip+base64 content of /a: ")


def test_corrupt_gzip_checksum_is_a_named_problem() -> None:
    good = bytearray(gzip.compress(b"hello world", mtime=0))
    good[-8] ^= 0xFF  # the CRC32 of the trailer
    content = base64.b64encode(bytes(good)).decode()
    message = problems_of(dump({"write_files": [{"path": "/a", "encoding": "gz+b64", "content": content}]}))
    assert message.startswith("write_files[0].content: cannot decode gz+b64 content of /a: ")


@pytest.mark.parametrize("entry", ["42", "~", "{a: b}", "[ls, 1]", "[ls, [a]]", "true"])
def test_bad_command(entry: str) -> None:
    message = problems_of(f"#cloud-config\nruncmd:\n- echo fine\n- {entry}\n")
    assert message == "runcmd[1]: neither a string nor a list of strings"


def test_every_problem_is_reported_at_once() -> None:
    text = dump(
        {
            "bootcmd": ["true"],
            "write_files": [
                {"path": "/ok", "content": "fine"},
                {"path": "relative"},
                {"path": "/enc", "encoding": "rot13"},
                {"path": "/perm", "permissions": "9"},
                {"path": "/bad64", "encoding": "b64", "content": "a"},
                "not a mapping",
            ],
            "runcmd": ["echo ok", 3, ["a", None]],
        }
    )
    problems = problems_of(text).split("; ")
    assert [p.split(":", 1)[0] for p in problems] == [
        "unsupported cloud-init modules",
        "write_files[1].path",
        "write_files[2].encoding",
        "write_files[3].permissions",
        "write_files[4].content",
        "write_files[5]",
        "runcmd[1]",
        "runcmd[2]",
    ]
    assert "/bad64" in problems[4]


def test_problems_of_both_lists_when_neither_is_a_list() -> None:
    message = problems_of("#cloud-config\nwrite_files: x\nruncmd: y\n")
    assert message == "write_files: not a list; runcmd: not a list"


def test_error_is_a_value_error() -> None:
    assert issubclass(BootstrapDataError, ValueError)


# -- kubeadm_step ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "step"),
    [
        (INIT, KubeadmStep("init", "/run/kubeadm/kubeadm.yaml", SUCCESS)),
        (JOIN, KubeadmStep("join", "/run/kubeadm/kubeadm-join-config.yaml", SUCCESS)),
        (
            f"kubeadm init --config /run/kubeadm/kubeadm.yaml --v 5 && echo success > {SUCCESS}",
            KubeadmStep("init", "/run/kubeadm/kubeadm.yaml", SUCCESS),
        ),
        (
            f"kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml --v 10 && echo success > {SUCCESS}",
            KubeadmStep("join", "/run/kubeadm/kubeadm-join-config.yaml", SUCCESS),
        ),
        (
            "kubeadm init --config /k.yaml --v=5 --skip-phases=addon/kube-proxy -v 2 && echo success > /s",
            KubeadmStep("init", "/k.yaml", "/s"),
        ),
        (
            f"kubeadm init --config /k.yaml&& echo success > {SUCCESS}",
            KubeadmStep("init", "/k.yaml", SUCCESS),
        ),
        (
            "kubeadm init --config /run/kubeadm/kubeadm.yaml",
            KubeadmStep("init", "/run/kubeadm/kubeadm.yaml", None),
        ),
        ("  kubeadm join --config /j.yaml --v 5  ", KubeadmStep("join", "/j.yaml", None)),
    ],
)
def test_kubeadm_step(command: str, step: KubeadmStep) -> None:
    assert kubeadm_step(command) == step


@pytest.mark.parametrize(
    "command",
    [
        "echo hello",
        "",
        "kubeadm",
        "kubeadm init",
        "kubeadm reset --force",
        "kubeadm upgrade apply v1.31.0",
        "kubeadm init --config",
        "kubeadm init --config= /k.yaml",
        "sudo kubeadm init --config /k.yaml",
        "kubeadm init --config /k.yaml; rm -rf /",
        f"kubeadm init --config /k.yaml && echo success > {SUCCESS} && rm -rf /",
        "kubeadm init --config /k.yaml && rm -rf /",
        "kubeadm init --config /k.yaml && echo failure > /s",
        "kubeadm init --config /k.yaml --v 5 extra",
        "kubeadm init --config /k.yaml | tee /log",
        "KUBEADM init --config /k.yaml",
    ],
)
def test_not_a_kubeadm_step(command: str) -> None:
    """Anything more than the kubeadm call and its sentinel runs verbatim: no step is recognised."""
    assert kubeadm_step(command) is None


# -- kubeadm_documents -----------------------------------------------------------------------------


def test_kubeadm_documents_by_kind() -> None:
    config = b"""\
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.32.0
---
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    token: abcdef.0123456789abcdef
"""
    docs = kubeadm_documents(config)
    assert list(docs) == ["ClusterConfiguration", "JoinConfiguration"]
    assert docs["ClusterConfiguration"]["kubernetesVersion"] == "v1.32.0"
    assert docs["JoinConfiguration"]["discovery"]["bootstrapToken"]["token"] == "abcdef.0123456789abcdef"


def test_kubeadm_documents_last_of_a_kind_wins() -> None:
    docs = kubeadm_documents(b"kind: InitConfiguration\nn: 1\n---\nkind: InitConfiguration\nn: 2\n")
    assert docs == {"InitConfiguration": {"kind": "InitConfiguration", "n": 2}}


@pytest.mark.parametrize("config", [b"", b"---\n", b"---\n---\n", b"# only a comment\n", b"{}\n"])
def test_kubeadm_documents_empty(config: bytes) -> None:
    assert kubeadm_documents(config) == {}


@pytest.mark.parametrize(
    "config",
    [
        b"apiVersion: kubeadm.k8s.io/v1beta4\n",
        b"kind: 3\n",
        b"kind: [a]\n",
        b"- kind: InitConfiguration\n",
        b"just text\n",
        b"kind: ClusterConfiguration\n---\nnokind: true\n",
    ],
)
def test_kubeadm_documents_without_a_kind(config: bytes) -> None:
    with pytest.raises(BootstrapDataError, match="a document without a kind"):
        kubeadm_documents(config)


@pytest.mark.parametrize("config", [b"kind: [\n", b"kind: a\n---\n: : :\n\t- x", b"\xff\xfe kind"])
def test_kubeadm_documents_not_yaml(config: bytes) -> None:
    with pytest.raises(BootstrapDataError, match="the kubeadm configuration is not valid YAML: "):
        kubeadm_documents(config)


def test_content_that_yaml_reads_as_a_number_is_named() -> None:
    """Unquoted base64 such as ``31E5`` is a float to YAML 1.2: its text is gone, so it is
    reported (producers quote such scalars, as CABPK's marshaller does), not decoded wrongly."""
    text = "#cloud-config\nwrite_files:\n- path: /a\n  encoding: base64\n  content: 31E5\n"
    with pytest.raises(BootstrapDataError, match=r"write_files\[0\]\.content: must be a string, got float"):
        parse_cloud_config(text)
