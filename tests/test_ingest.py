"""Ingest: secret detection, file classification, chunking, HTML, QA parsing, groundedness, the
config, the walk of a real git fixture, a whole run against a fake endpoint that echoes whatever
it is shown (so a secret that reached the model would reach the outputs), and, slow, this
project's own repository through the embedded model.

Planted secrets are built at run time from a seeded RNG, so this file holds none itself."""

from __future__ import annotations

import json
import random
import re
import string
import subprocess
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.ingest import Ingest, load_ingest_config
from pipeline.prompts import render
from pipeline.stats import StageStats
from pipeline.walk import walk
from stages import ingest as ing
from stages import sources as src
from stages.ingest import IngestConfig
from tests.fake_openai import FakeOpenAI, Reply, completion_body
from tests.test_books import assert_books

REPO_ROOT = Path(__file__).resolve().parent.parent
RNG = random.Random(8)


def _rand(alphabet: str, n: int) -> str:
    return "".join(RNG.choices(alphabet, k=n))


ALNUM = string.ascii_letters + string.digits
OPENAI_KEY = "sk-" + _rand(ALNUM, 40)
AWS_KEY = "AKIA" + _rand(string.ascii_uppercase + string.digits, 16)
GH_TOKEN = "ghp_" + _rand(ALNUM, 36)
DB_PASSWORD = "pw" + _rand(ALNUM, 14)
KEY_BODY = _rand(ALNUM + "+/", 64)
PRIVATE_KEY = (
    "-----BEGIN "
    + "OPENSSH PRIVATE KEY-----\n"
    + KEY_BODY
    + "\n-----END "
    + "OPENSSH PRIVATE KEY-----\n"
)
ENTROPY_TOKEN = _rand(ALNUM, 48)
VENDORED_MARK = "vendored_marker_" + _rand(string.ascii_lowercase, 12)
BINARY_MARK = "binary_marker_" + _rand(string.ascii_lowercase, 12)
IGNORED_MARK = "ignored_marker_" + _rand(string.ascii_lowercase, 12)
OUTSIDE_MARK = "outside_marker_" + _rand(string.ascii_lowercase, 12)
PLANTED = [
    OPENAI_KEY,
    AWS_KEY,
    GH_TOKEN,
    DB_PASSWORD,
    KEY_BODY,
    ENTROPY_TOKEN,
    VENDORED_MARK,
    BINARY_MARK,
    IGNORED_MARK,
    OUTSIDE_MARK,
]

APP_PY = '''"""Tiny inventory service."""

MAX_ITEMS = 250


def add_item(inventory, name):
    """Add name to the inventory unless it already holds MAX_ITEMS items."""
    if len(inventory) >= MAX_ITEMS:
        raise ValueError("inventory full")
    inventory.append(name)
    return inventory
'''
GUIDE_MD = """# Operations guide

The inventory service keeps at most 250 items. Restart it with `make restart` after editing
the settings. Backups run nightly at 02:00 and are kept for 14 days.
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def fixture_repo(tmp_path: Path) -> Path:
    """A git repository with planted secrets, a .env, a private key, node_modules, a binary,
    a gitignored file and a symlink pointing outside the checkout."""
    repo = tmp_path / "shopfront"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "app.py").write_text(APP_PY)
    (repo / "src" / "settings.py").write_text(f'DEBUG = False\nOPENAI_API_KEY = "{OPENAI_KEY}"\n')
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text(GUIDE_MD)
    (repo / ".env").write_text(f"AWS_ACCESS_KEY_ID={AWS_KEY}\nDB_PASSWORD={DB_PASSWORD}\n")
    (repo / "deploy").mkdir()
    (repo / "deploy" / "deploy_key").write_text(PRIVATE_KEY)
    (repo / "ci.yml").write_text(f"steps:\n  - run: make test\n    env:\n      GH: {GH_TOKEN}\n")
    (repo / "blob.txt").write_text(f"data = {ENTROPY_TOKEN}\n")
    (repo / "node_modules" / "left-pad").mkdir(parents=True)
    (repo / "node_modules" / "left-pad" / "index.js").write_text(
        f"module.exports = '{VENDORED_MARK}';\n"
    )
    (repo / "assets").mkdir()
    (repo / "assets" / "logo.png").write_bytes(
        b"\x89PNG\r\n\x1a\n\x00\x00" + BINARY_MARK.encode() + b"\x00\xff"
    )
    (repo / ".gitignore").write_text("local-notes.txt\n*.log\n")
    (repo / "local-notes.txt").write_text(f"token {IGNORED_MARK}\n")
    outside = tmp_path / "outside.txt"
    outside.write_text(f"{OUTSIDE_MARK}\n")
    (repo / "notes_link.md").symlink_to(outside)
    (repo / "yarn.lock").write_text("left-pad@1.3.0:\n  version 1.3.0\n")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "dev@example.invalid")
    git(repo, "config", "user.name", "Dev")
    git(repo, "add", "-A")
    git(
        repo,
        "commit",
        "-q",
        "-m",
        "Add inventory service",
        "-m",
        "The service caps the inventory at 250 items.",
    )
    return repo


def all_output_text(run_dir: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in run_dir.rglob("*") if p.is_file()
    )


# -- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (f'key = "{OPENAI_KEY}"', "api_key_sk"),
        (f"id: {AWS_KEY}", "aws_access_key_id"),
        (f"aws_secret_access_key = {_rand(ALNUM + '/+', 40)}", "aws_secret_access_key"),
        (f"token={GH_TOKEN}", "github_token"),
        (PRIVATE_KEY, "private_key"),
        (f'db_password = "{DB_PASSWORD}"', "password_assignment"),
        (f'{{"client_secret": "{DB_PASSWORD}"}}', "password_assignment"),
        ("xoxb-" + _rand(string.digits, 12) + "-" + _rand(ALNUM, 24), "slack_token"),
        ("AIza" + _rand(ALNUM + "_-", 35), "google_api_key"),
        (f"blob {ENTROPY_TOKEN}", "high_entropy_token"),
    ],
)
def test_find_secrets_detects_each_kind(text: str, kind: str) -> None:
    hits = src.find_secrets("first line\n" + text)
    assert kind in {h.kind for h in hits}
    assert all(h.line == 2 for h in hits if h.kind == kind)


def test_find_secrets_leaves_ordinary_code_alone() -> None:
    clean = (
        'api_key_env: str = "OPENAI_API_KEY"\n'
        'password = "${DB_PASSWORD}"\n'
        'secret = "<your-secret-here>"\n'
        'commit = "3f786850e387550fdab836ed7e6dc881de23001b"\n'
        "def test_dedup_keeps_the_first_of_each_near_duplicate_group(): pass\n"
        "model = 'SmolLM2-135M-Instruct.Q4_1.gguf'\n"
        "sk-learn-style-long-hyphenated-prose-without-digits\n"
    )
    assert src.find_secrets(clean) == []


def test_secret_skip_detail_names_kind_and_line_never_the_value() -> None:
    reason, detail = src.classify_content(f"x = 1\nkey = '{OPENAI_KEY}'\n")
    assert reason == "secret"
    assert {"kind": "api_key_sk", "line": 2} in detail["findings"]
    assert OPENAI_KEY not in json.dumps(detail)


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "reason"),
    [
        ("node_modules/left-pad/index.js", "repo", "vendored"),
        ("web/vendor/jquery.js", "repo", "vendored"),
        (".venv/lib/site.py", "repo", "vendored"),
        ("dist/app.js", "repo", "generated"),
        ("build/lib/x.py", "repo", "generated"),
        ("static/app.min.js", "repo", "generated"),
        ("package-lock.json", "repo", "generated"),
        ("poetry.lock", "repo", "generated"),
        ("proto/user_pb2.py", "repo", "generated"),
        (".env", "repo", "secret_file"),
        ("config/.env.production", "repo", "secret_file"),
        ("keys/id_ed25519", "repo", "secret_file"),
        ("certs/server.pem", "repo", "secret_file"),
        ("docs/logo.svg", "docs", "not_a_document"),
        ("src/app.py", "repo", None),
        (".env.example", "repo", None),
        ("guide/intro.md", "docs", None),
        ("guide/index.html", "docs", None),
    ],
)
def test_classify_path(path: str, kind: str, reason: str | None) -> None:
    assert src.classify_path(path, kind=kind)[0] == reason


def test_decode_and_content_rules() -> None:
    assert src.decode(b"abc\x00def") == (None, "binary")
    assert src.decode(b"caf\xe9 latin-1") == (None, "undecodable")
    assert src.decode("\ufeffhello".encode()) == ("hello", None)
    assert src.classify_content("  \n\t\n")[0] == "empty"
    assert (
        src.classify_content("// Code generated by protoc-gen-go. DO NOT EDIT.\npackage x\n")[0]
        == "generated"
    )
    assert (
        src.classify_content("# A module that documents how banners are detected.\nx = 1\n")[0]
        is None
    )


# -- chunking, HTML, parsing ------------------------------------------------------------------


def test_chunks_fit_the_budget_keep_every_byte_and_number_lines() -> None:
    text = (REPO_ROOT / "pipeline" / "cli.py").read_text(encoding="utf-8")
    chunks = src.chunk_lines(text, 200)
    assert len(chunks) > 5
    assert "".join(c.text for c in chunks) == text
    assert all(src.approx_token_count(c.text) <= 200 for c in chunks)
    lines = text.splitlines(keepends=True)
    for c in chunks:
        assert c.text == "".join(lines[c.first_line - 1 : c.last_line])
    # An overlong single line is cut inside, and still fits.
    long = "word " * 500 + "\nshort\n"
    parts = src.chunk_lines(long, 50)
    assert "".join(c.text for c in parts) == long
    assert all(src.approx_token_count(c.text) <= 50 for c in parts)
    assert parts[-1].first_line == 1 or parts[-1].text == "short\n"


def test_chunking_with_a_different_counter() -> None:
    words = lambda s: len(s.split())  # noqa: E731
    text = "".join(f"line {i} has five words\n" for i in range(40))
    chunks = src.chunk_lines(text, 12, words)
    assert [c.last_line - c.first_line + 1 for c in chunks] == [2] * 20


def test_approx_token_count() -> None:
    assert src.approx_token_count("") == 0
    assert src.approx_token_count("hello world") == 2
    assert src.approx_token_count("internationalization") == 4  # 20 letters / 6, rounded up
    assert src.approx_token_count("f(x) = 42;") == 1 + 1 + 1 + 1 + 1 + 2 + 1


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<h1>Deploy   guide</h1><p>Run <code>make  deploy</code>\n then wait.</p>"
        "<ul><li>one</li><li>two</li></ul><pre>def f():\n    return 1\n</pre>"
        "<script>var secret = 1;</script><p>A &amp; B</p></body></html>"
    )
    assert (
        src.html_to_text(html)
        == "# Deploy guide\n\nRun make deploy then wait.\n\n- one\n- two\n\ndef f():\n    return 1\n\nA & B\n"
    )


def test_parse_qa_messy_replies() -> None:
    reply = (
        " What limit does the service enforce?\nAnswer: At most 250 items.\n\n"
        "**Question 2:** How is it restarted?\n**Answer:** With `make restart`.\n"
        "Q3: When do backups run?\nA: Nightly at 02:00.\n"
        "Question 4: What is kept for 14 days?\nBackups are kept for 14 days.\n"
        "Question 5: And then"
    )
    pairs = ing.parse_qa("Question 1:" + reply)
    assert pairs == [
        ("What limit does the service enforce?", "At most 250 items."),
        ("How is it restarted?", "With `make restart`."),
        ("When do backups run?", "Nightly at 02:00."),
        ("What is kept for 14 days?", "Backups are kept for 14 days."),
        ("And then", None),
    ]
    assert ing.parse_qa("no questions here") == []


# -- groundedness -----------------------------------------------------------------------------


def test_grounded_answer_is_kept() -> None:
    rec = {
        "instruction": "What does add_item do?",
        "output": "`add_item` appends the name to the inventory and raises ValueError once it holds MAX_ITEMS (250) items.",
    }
    assert ing.check(rec, APP_PY) is None


@pytest.mark.parametrize(
    "answer",
    [
        "`add_item` calls `persist_to_redis` after appending.",  # invented identifier
        "The inventory holds at most 500 items.",  # wrong number
        "It sends an email notification to the warehouse manager via the cloud queue.",  # invented prose
        "Yes.",  # nothing to check
    ],
)
def test_ungrounded_answers_are_rejected(answer: str) -> None:
    assert ing.check({"instruction": "q?", "output": answer}, APP_PY) == ing.REASON_UNGROUNDED


def test_secret_in_generated_text_is_rejected() -> None:
    rec = {"instruction": "What is the key?", "output": f"The key is {OPENAI_KEY}."}
    assert ing.check(rec, f"key {OPENAI_KEY}") == ing.REASON_SECRET_OUTPUT


def test_run_grounding_reports_missing_terms() -> None:
    rejected: list[dict] = []
    stats = StageStats(stage="ground", sink=rejected.append)
    recs = [
        {
            "id": "a",
            "instruction": "q",
            "output": "The inventory holds MAX_ITEMS (250) items.",
            "meta": {"source": "src/app.py"},
        },
        {
            "id": "b",
            "instruction": "q",
            "output": "The limit is 999 per shelf.",
            "meta": {"source": "src/app.py"},
        },
    ]
    kept = list(ing.run_grounding(recs, {"src/app.py": APP_PY}, stats))
    assert [r["id"] for r in kept] == ["a"]
    assert stats.total == 2 and stats.kept == 1 and stats.dropped == {"ungrounded_answer": 1}
    assert "999" in rejected[0]["reject"]["missing"]


# -- prompts and config -----------------------------------------------------------------------


def test_qa_chat_prompt_renders_exactly() -> None:
    text = render(
        "ingest_qa_chat",
        what="file",
        path="src/app.py",
        repo="shopfront",
        count=2,
        document="x = 1",
    )
    assert text == (
        "Below is the file `src/app.py` from shopfront. Write 2 question-and-answer pairs that someone working on shopfront might ask about it.\n"
        "\n"
        "Rules:\n"
        "- Each answer must be fully supported by the text below: use its own names, numbers and wording; add nothing it does not say.\n"
        "- Each question must stand on its own, so name the file or the thing it is about.\n"
        '- Number them Question 1 to Question 2, each followed by a line starting "Answer:".\n'
        "\n"
        "--- src/app.py ---\n"
        "x = 1\n"
        "--- end of src/app.py ---\n"
    )


def test_ingest_is_a_section_of_the_pipeline_config(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "ingest:\n  qa_per_doc: 2\n  max_files: 5\n  snapshot_date: 2024-05-01\n"
        "llm:\n  concurrency: 3\n"
    )
    cfg = load_config(cfg_file, ["ingest.max_files=7", "dedup.threshold=0.5", "run=r1"])
    icfg = cfg.ingest
    assert (icfg.qa_per_doc, icfg.max_files, icfg.kind) == (2, 7, "repo")
    # YAML reads an unquoted date as a date; the config keeps its ISO string.
    assert icfg.snapshot_date == "2024-05-01"
    assert cfg.llm.concurrency == 3 and cfg.dedup.threshold == 0.5 and cfg.run == "r1"
    with pytest.raises(ConfigError, match="ingest.max_chunk"):
        load_config(None, ["ingest.max_chunk=5"])
    with pytest.raises(ConfigError, match="ingest.max_tokens_per_chunk=10"):
        load_config(None, ["ingest.max_tokens_per_chunk=10"])
    with pytest.raises(ConfigError, match="ingest.validation_fraction"):
        load_config(None, ["ingest.validation_fraction=0.2"])  # the split is export's now
    with pytest.raises(ConfigError, match="export.validation_fraction=1.5"):
        load_config(None, ["export.validation_fraction=1.5"])
    with pytest.raises(ConfigError, match="ingest.snapshot_date"):
        load_config(None, ["ingest.snapshot_date=yesterday"])
    with pytest.raises(ConfigError, match="ingest.snapshot_date"):
        load_config(None, ["ingest.snapshot_date=2024-05-01 10:00:00"])
    with pytest.raises(ConfigError, match="llm.concurrency"):
        load_config(None, ["llm.concurrency=0"])
    with pytest.raises(ValueError, match="ingest.kind"):
        IngestConfig(kind="wiki")


def test_ingest_defaults_lie_under_the_users_config(tmp_path: Path) -> None:
    cfg = load_ingest_config(None, ["dedup.threshold=0.5"], kind="docs", run="r1")
    assert cfg.ingest.kind == "docs" and cfg.run == "r1" and cfg.dedup.threshold == 0.5
    assert "file" not in cfg.filter.blocklist and "image" in cfg.filter.blocklist
    assert cfg.filter.mode == "general"
    assert "file" in load_config(None).filter.blocklist  # generate's default is untouched
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("ingest:\n  kind: repo\nfilter:\n  blocklist: [lorem]\n")
    cfg = load_ingest_config(cfg_file, ["filter.mode=code"], kind="docs")
    assert cfg.filter.blocklist == ["lorem"] and cfg.filter.mode == "code"
    assert cfg.ingest.kind == "docs"  # --kind wins over the file


def test_shipped_config_loads() -> None:
    cfg = load_config(REPO_ROOT / "configs" / "ingest.yaml")
    assert cfg.ingest.max_tokens_per_chunk == 8192 and cfg.export.validation_fraction == 0.1


# -- the walk ---------------------------------------------------------------------------------


def test_walk_skips_each_planted_file_with_its_reason(fixture_repo: Path) -> None:
    w = walk(fixture_repo, IngestConfig())
    reasons = {s["path"]: s["reason"] for s in w.skipped}
    assert reasons["src/settings.py"] == "secret"
    assert reasons[".env"] == "secret_file"
    assert reasons["deploy/deploy_key"] == "secret"
    assert reasons["ci.yml"] == "secret"
    assert reasons["blob.txt"] == "secret"
    assert reasons["node_modules/left-pad/index.js"] == "vendored"
    assert reasons["assets/logo.png"] == "binary"
    assert reasons["local-notes.txt"] == "gitignored"
    assert reasons["notes_link.md"] == "symlink"
    assert reasons["yarn.lock"] == "generated"
    kinds = {s["path"]: {f["kind"] for f in s.get("findings", [])} for s in w.skipped}
    assert kinds["deploy/deploy_key"] >= {"private_key"} and kinds["ci.yml"] >= {"github_token"}
    assert sorted(d.path for d in w.documents) == [".gitignore", "docs/guide.md", "src/app.py"]
    # The walk's books: every listed path is either a document or a skip, once.
    assert w.stats.balance_error() is None
    assert w.stats.entered == w.listed == len(w.documents) + len(w.skipped)
    assert w.stats.dropped["secret"] == 4 and w.stats.kept == 3


def test_walk_of_a_plain_folder_honours_nested_gitignores(tmp_path: Path) -> None:
    docs = tmp_path / "wiki"
    (docs / "team" / "drafts").mkdir(parents=True)
    (docs / "index.html").write_text(
        "<html><body><h1>Welcome</h1><p>Read the team pages.</p></body></html>"
    )
    (docs / "team" / "people.md").write_text("# People\n\nAda runs the build.\n")
    (docs / "team" / ".gitignore").write_text("drafts/\n*.tmp\n")
    (docs / "team" / "drafts" / "idea.md").write_text("unfinished\n")
    (docs / "team" / "scratch.tmp").write_text("scratch\n")
    (docs / "logo.png").write_bytes(b"\x89PNG\x00")
    (docs / "node_modules").mkdir()
    (docs / "node_modules" / "x.md").write_text("vendored\n")
    w = walk(docs, IngestConfig(kind="docs"))
    reasons = {s["path"]: s["reason"] for s in w.skipped}
    assert reasons == {
        "team/drafts/": "gitignored",
        "team/scratch.tmp": "gitignored",
        "logo.png": "not_a_document",
        "node_modules/": "vendored",
        "team/.gitignore": "not_a_document",
    }
    pages = {d.path: d.text for d in w.documents}
    assert pages["index.html"] == "# Welcome\n\nRead the team pages.\n"
    assert set(pages) == {"index.html", "team/people.md"}


# -- a whole run ------------------------------------------------------------------------------


def echo_qa(body: dict, n: int) -> Reply:
    """A 'model' that repeats the document it was shown as its answer (so anything that reached
    the prompt reaches the outputs), plus one invented answer that must be rejected."""
    prompt = body["messages"][0]["content"]
    path, doc = re.search(r"^--- (.+?) ---\n(.*)\n--- end of \1 ---$", prompt, re.S | re.M).groups()
    first = next(line for line in doc.splitlines() if line.strip()).strip('# "')
    text = (
        f"Question 1: What does {path} begin with?\nAnswer: In {path}: {first}\n\n"
        f"Question 2: Who maintains {path}?\nAnswer: Zebediah Quuxworth has maintained it since 1875."
    )
    return Reply(body=completion_body(text, chat=True, prompt_tokens=200, completion_tokens=40))


SHIPPED = REPO_ROOT / "configs" / "ingest.yaml"


def run_fixture(repo: Path, tmp_path: Path, url: str, *extra: str) -> Ingest:
    """An ingest run as the CLI makes it (the shipped config, then --set overrides)."""
    cfg = load_ingest_config(
        SHIPPED,
        [
            "ingest.qa_per_doc=2",
            "ingest.include_git_log=true",
            "ingest.snapshot_date=2024-05-01",
            f"output_dir={tmp_path / 'out'}",
            f"llm.base_url={url}",
            "llm.max_retries=1",
            *extra,
        ],
        run="fx",
    )
    job = Ingest(repo, cfg, progress=False)
    job.execute()
    return job


def test_ingest_run_against_an_echoing_model_leaks_no_secret(
    fixture_repo: Path, tmp_path: Path
) -> None:
    with FakeOpenAI(echo_qa) as srv:
        job = run_fixture(fixture_repo, tmp_path, srv.base_url)
        sent = json.dumps([b for _, _, b in srv.requests])
    out = job.dir
    for secret in PLANTED:
        assert secret not in sent, "a planted secret was sent to the model"
    text = all_output_text(out)
    for secret in PLANTED:
        assert secret not in text, "a planted secret reached an output file"

    stats = json.loads((out / "stats.json").read_text())
    assert stats["mode"] == "ingest" and stats["run"] == "fx"
    st = stats["stages"]
    # Born in generate: 3 files x 2 QA pairs, one recall record per file, one commit.
    assert st["generate"]["total"] == 10 and st["generate"]["kept"] == 10
    generated = [json.loads(line) for line in (out / "01_generated.jsonl").read_text().splitlines()]
    assert (
        sorted(r["meta"]["kind"] for r in generated)
        == ["commit"] + ["file_recall"] * 3 + ["qa"] * 6
    )
    assert st["ground"]["entered"] == 6 and st["ground"]["dropped"] == {"ungrounded_answer": 3}
    assert st["walk"]["kept"] == 3 and st["git_log"]["kept"] == 1
    assert_books(out)
    assert stats["llm"]["requests"] == 3
    assert {"total", "kept", "rejected", "dropped", "seconds"} <= set(st["export"])

    messages = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    validation = [
        json.loads(line) for line in (out / "messages.validation.jsonl").read_text().splitlines()
    ]
    every = messages + validation
    assert len(every) == st["export"]["kept"] and len(validation) == max(1, round(len(every) * 0.1))
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in every)
    by_instruction = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in every}
    recall = by_instruction_matching(by_instruction, "src/app.py", "2024-05-01")
    assert recall.startswith(
        "As of 2024-05-01, `src/app.py` in shopfront reads:\n\n"
    ) and recall.endswith(APP_PY)
    assert any("Summarise commit" in q for q in by_instruction)
    assert "In docs/guide.md: Operations guide" in by_instruction.values()
    assert not any("Quuxworth" in a for a in by_instruction.values())

    raw = [json.loads(line) for line in (out / "raw_text.jsonl").read_text().splitlines()]
    assert {r["source"] for r in raw} == {".gitignore", "docs/guide.md", "src/app.py"}
    app = next(r for r in raw if r["source"] == "src/app.py")
    assert app["text"] == "shopfront/src/app.py\n\n" + APP_PY

    report = json.loads((out / "ingest_report.json").read_text())
    named = {s["path"]: s["reason"] for s in report["skipped"]}
    for path in (
        "src/settings.py",
        ".env",
        "deploy/deploy_key",
        "node_modules/left-pad/index.js",
        "assets/logo.png",
        "local-notes.txt",
    ):
        assert path in named
    assert report["files_kept"] == 3


def by_instruction_matching(pairs: dict[str, str], path: str, date: str) -> str:
    hits = [a for q, a in pairs.items() if f"`{path}`" in q and date in q]
    assert len(hits) == 1, hits
    return hits[0]


def embedded_args(srv) -> tuple[str, ...]:
    """--set overrides for a run on the shared real embedded server (completion prompts)."""
    return ("llm.api=completion", f"llm.model={srv.model_name}", "ingest.qa_max_tokens=96")


@pytest.mark.slow
def test_rerun_replays_from_the_cache(embedded_server, fixture_repo: Path, tmp_path: Path) -> None:
    srv = embedded_server
    first = run_fixture(fixture_repo, tmp_path, srv.base_url, *embedded_args(srv))
    llm = json.loads((first.dir / "stats.json").read_text())["llm"]
    assert llm["requests"] == 3 and llm["cached"] == 0
    data = (first.dir / "data.json").read_text()
    again = run_fixture(fixture_repo, tmp_path, srv.base_url, *embedded_args(srv))
    llm = json.loads((again.dir / "stats.json").read_text())["llm"]
    assert llm["requests"] == llm["cached"] == 3, "a finished run, rerun, pays nothing"
    assert (again.dir / "data.json").read_text() == data
    assert_books(again.dir)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fail_the_guide(body: dict, n: int) -> Reply:
    """The echoing model, but every request about docs/guide.md fails with a server error."""
    if "--- docs/guide.md ---" in body["messages"][0]["content"]:
        return Reply(status=500, body={"error": {"message": "the model crashed"}})
    return echo_qa(body, n)


def test_a_failed_request_is_a_generate_reject_named_by_its_kind(
    fixture_repo: Path, tmp_path: Path
) -> None:
    with FakeOpenAI(fail_the_guide) as srv:
        job = run_fixture(fixture_repo, tmp_path, srv.base_url, "llm.backoff_max=0.05")
    rejected = jsonl(job.dir / "01_generated.rejected.jsonl")
    assert [(r["id"], r["reject"]["reason"], r["meta"]["source"]) for r in rejected] == [
        ("q1", "request_failed", "docs/guide.md")
    ]
    assert "500" in rejected[0]["meta"]["error"]
    stats = assert_books(job.dir)
    assert stats["stages"]["generate"]["kept"] == 4 + 4  # 2 files x 2 pairs, 3 recall, 1 commit


def test_a_spent_budget_rejects_the_requests_left_as_budget_exhausted(
    fixture_repo: Path, tmp_path: Path
) -> None:
    with FakeOpenAI(echo_qa) as srv:
        job = run_fixture(
            fixture_repo, tmp_path, srv.base_url, "llm.concurrency=1", "llm.max_tokens_total=100"
        )
    reasons = {
        r["id"]: r["reject"]["reason"] for r in jsonl(job.dir / "01_generated.rejected.jsonl")
    }
    # The first answer spends the budget; the last request is never sent (the second may be in
    # flight by then).
    assert reasons["q2"] == "budget_exhausted" and set(reasons.values()) == {"budget_exhausted"}
    stats = assert_books(job.dir)
    assert stats["stopped_reason"] == "budget"


def test_a_commit_holding_a_secret_is_skipped_and_never_written(
    fixture_repo: Path, tmp_path: Path
) -> None:
    (fixture_repo / "NOTES.md").write_text("Rotate the keys every month.\n")
    git(fixture_repo, "add", "NOTES.md")
    git(fixture_repo, "commit", "-q", "-m", "Add notes", "-m", f"The old key was {AWS_KEY}.")
    job = run_fixture(fixture_repo, tmp_path, "http://127.0.0.1:9", "ingest.qa_per_doc=0")
    report = json.loads((job.dir / "ingest_report.json").read_text())
    commits = [s for s in report["skipped"] if s["path"].startswith("commit:")]
    assert [(s["reason"], s["findings"]) for s in commits] == [
        ("secret", [{"kind": "aws_access_key_id", "line": 2}])
    ]
    stats = assert_books(job.dir)
    assert stats["stages"]["git_log"]["kept"] == 1
    assert stats["stages"]["git_log"]["dropped"] == {"secret": 1}
    assert AWS_KEY not in all_output_text(job.dir)
    assert [r["meta"]["commit"] for r in jsonl(job.dir / "04_filter.jsonl") if r["id"][0] == "c"]


def test_export_settings_apply_to_an_ingest_run(fixture_repo: Path, tmp_path: Path) -> None:
    job = run_fixture(
        fixture_repo,
        tmp_path,
        "http://127.0.0.1:9",
        "ingest.qa_per_doc=0",
        "export.validation_fraction=0",
        "export.system_prompt=You know shopfront.",
    )
    messages = jsonl(job.dir / "messages.jsonl")
    assert len(messages) == 4  # 3 recall, 1 commit
    assert all(
        r["messages"][0] == {"role": "system", "content": "You know shopfront."} for r in messages
    )
    assert not (job.dir / "messages.validation.jsonl").exists()
    assert_books(job.dir)


def test_long_files_are_chunked_for_raw_text_and_recall(fixture_repo: Path, tmp_path: Path) -> None:
    (fixture_repo / "src" / "big.py").write_text(
        "".join(f"VALUE_{i} = {i} * 2  # entry {i}\n" for i in range(400))
    )
    with FakeOpenAI(echo_qa) as srv:
        job = run_fixture(
            fixture_repo,
            tmp_path,
            srv.base_url,
            "ingest.max_tokens_per_chunk=300",
            "ingest.qa_per_doc=0",
        )
    raw = [json.loads(line) for line in (job.dir / "raw_text.jsonl").read_text().splitlines()]
    big = [r["text"] for r in raw if r["source"] == "src/big.py"]
    assert len(big) > 5
    assert all(src.approx_token_count(t) <= 300 for t in big)
    assert big[1].startswith("shopfront/src/big.py (lines ")
    assert (
        "".join(t.split("\n\n", 1)[1] for t in big) == (fixture_repo / "src" / "big.py").read_text()
    )


def test_cli_entry(fixture_repo: Path, tmp_path: Path) -> None:
    from pipeline.cli import main

    rc = main(
        [
            "ingest",
            str(fixture_repo),
            "--run",
            "cli",
            "--set",
            "ingest.qa_per_doc=0",
            "--set",
            f"output_dir={tmp_path / 'o'}",
        ]
    )
    assert rc == 0
    assert (tmp_path / "o" / "cli" / "messages.jsonl").exists()
    assert main(["ingest", str(tmp_path / "missing"), "--set", f"output_dir={tmp_path / 'o'}"]) == 1
    assert not (tmp_path / "o" / "ingest-missing").exists()


@pytest.mark.slow
def test_real_tokenizer_chunks_fit(fixture_repo: Path) -> None:
    from pipeline.ingest import token_counter

    count, desc = token_counter("smollm2")
    assert desc.endswith(".gguf")
    text = (REPO_ROOT / "stages" / "filters.py").read_text(encoding="utf-8")
    chunks = src.chunk_lines(text, 256, count)
    assert "".join(c.text for c in chunks) == text
    assert all(count(c.text) <= 256 for c in chunks)
    # The estimate errs on the long side of the real count, so estimated chunks fit too.
    assert src.approx_token_count(text) >= count(text)


@pytest.mark.slow
def test_ingest_this_repository_on_the_embedded_model(embedded_server, tmp_path: Path) -> None:
    from pipeline.cli import main

    srv = embedded_server
    rc = main([
        "ingest", str(REPO_ROOT), "--run", "self",
        "--set", f"output_dir={tmp_path}",
        "--set", f"llm.base_url={srv.base_url}", "--set", "llm.api=completion",
        "--set", f"llm.model={srv.model_name}",
        "--set", "ingest.max_files=8", "--set", "ingest.qa_per_doc=1",
        "--set", "ingest.qa_context_tokens=192", "--set", "ingest.qa_max_tokens=96",
    ])  # fmt: skip
    assert rc == 0
    out = tmp_path / "self"
    stats = assert_books(out)
    assert stats["mode"] == "ingest" and stats["model"].startswith("SmolLM2")
    assert stats["llm"]["requests"] == 8 and stats["llm"]["failed"] == 0
    # One pair asked for per file: each request is one QA record, kept as parsed or rejected.
    qa = [r for r in jsonl(out / "01_generated.jsonl") if r["meta"]["kind"] == "qa"]
    assert len(qa) + stats["stages"]["generate"]["rejected"] == 8
    raw = [json.loads(line) for line in (out / "raw_text.jsonl").read_text().splitlines()]
    assert len({r["source"] for r in raw}) == 8
    messages = (out / "messages.jsonl").read_text().splitlines()
    validation = (out / "messages.validation.jsonl").read_text().splitlines()
    assert (
        len(messages) + len(validation) == stats["kept"] >= 8
    )  # at least one recall pair per file
    assert len(validation) >= 1
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["files_kept"] == 8 and report["skipped_by_reason"].get("gitignored", 0) >= 1


# -- the trainer takes the mix ----------------------------------------------------------------


@pytest.fixture
def ingest_run(fixture_repo: Path, tmp_path: Path) -> Path:
    """An ingest run's directory (file-recall conversations, commits and raw text; no model)."""
    (fixture_repo / "src" / "big.py").write_text(
        "".join(f"VALUE_{i} = {i} * 2\n" for i in range(120))
    )
    cfg = load_ingest_config(
        SHIPPED,
        [
            "ingest.qa_per_doc=0",
            "ingest.include_git_log=true",
            "ingest.max_tokens_per_chunk=200",
            f"output_dir={tmp_path / 'out'}",
        ],
        run="mix",
    )
    job = Ingest(fixture_repo, cfg, progress=False)
    job.execute()
    return job.dir


def test_trainer_data_loading_mixes_raw_text_and_conversations(
    ingest_run: Path, tmp_path: Path
) -> None:
    from finetune.config import load_train_config
    from finetune.data import IGNORE_INDEX, build_datasets, read_raw_text
    from finetune.model import load_tokenizer
    from tests.finetune_fixtures import make_tokenizer

    make_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    cfg = load_train_config(
        REPO_ROOT / "configs" / "train-tiny-test.yaml",
        [
            f"data.raw_text={ingest_run / 'raw_text.jsonl'}",
            f"data.validation_path={ingest_run / 'messages.validation.jsonl'}",
            "data.max_length=256",
        ],
    )
    train_ds, val_ds, stats = build_datasets(cfg.data, tok, ingest_run / "messages.jsonl")
    n_conv = len((ingest_run / "messages.jsonl").read_text().splitlines())
    texts = read_raw_text(ingest_run / "raw_text.jsonl")
    assert (
        stats["raw_text"]["texts"]
        == len(texts)
        == len((ingest_run / "raw_text.jsonl").read_text().splitlines())
        > 4
    )
    assert len(train_ds) == stats["train"]["kept"] + stats["raw_text"]["rows"]
    assert stats["train"]["kept"] == n_conv and len(val_ds) == len(
        (ingest_run / "messages.validation.jsonl").read_text().splitlines()
    )
    rows = [train_ds[i] for i in range(len(train_ds))]
    conv, raw = rows[:n_conv], rows[n_conv:]
    assert all(IGNORE_INDEX in r["labels"] for r in conv)  # prompts masked
    assert all(
        r["labels"] == r["input_ids"] and len(r["input_ids"]) <= 256 for r in raw
    )  # loss on every token
    eos = tok.eos_token_id
    # Each text's tokens (BOS first) and EOS, cut into windows: the windows of one text rejoin to it.
    joined, i = [], 0
    for text in texts:
        ids = list(tok(text, add_special_tokens=True)["input_ids"]) + [eos]
        got: list[int] = []
        while len(got) < len(ids):
            got += raw[i]["input_ids"]
            i += 1
        joined.append(got == ids)
    assert all(joined) and i == len(raw)
    assert len(raw) > len(texts)  # some chunks were longer than data.max_length and were cut


def test_pipeline_export_redoes_an_ingest_runs_export_from_its_saved_config(
    ingest_run: Path,
) -> None:
    from pipeline.cli import main

    names = ("data.json", "messages.jsonl", "messages.validation.jsonl", "data.validation.json")
    before = {n: (ingest_run / n).read_text() for n in names}
    assert len(jsonl(ingest_run / "messages.validation.jsonl")) >= 1
    for n in names:
        (ingest_run / n).unlink()
    # The saved config.yaml holds the ingest section: the split seed and fraction come back.
    rc = main(["export", "--run", str(ingest_run)])
    assert rc == 0
    assert {n: (ingest_run / n).read_text() for n in names} == before


def test_raw_text_errors_name_file_line_and_field(tmp_path: Path) -> None:
    from finetune.data import read_raw_text
    from pipeline.records import RecordError

    bad = tmp_path / "raw_text.jsonl"
    bad.write_text('{"text": "ok", "source": "a"}\n{"txt": "oops", "source": "b"}\n')
    with pytest.raises(RecordError, match=r"raw_text.jsonl:2: field 'text': missing"):
        read_raw_text(bad)


@pytest.mark.slow
def test_training_runs_on_an_ingest_mix(ingest_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from finetune.config import load_train_config
    from finetune.train import run_training
    from tests.finetune_fixtures import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    cfg = load_train_config(
        REPO_ROOT / "configs" / "train-tiny-test.yaml",
        [
            f"model.name_or_path={tiny}",
            f"data.raw_text={ingest_run / 'raw_text.jsonl'}",
            "data.max_length=512",
            "training.max_steps=3",
            "training.eval_steps=3",
            "training.save_steps=3",
        ],
    )
    _, summary = run_training(cfg, ingest_run / "messages.jsonl", output_dir=tmp_path / "adapter")
    assert len(summary["losses"]) == 3 and all(
        loss == loss for _, loss in summary["losses"]
    )  # no NaN
    assert summary["data"]["raw_text"]["rows"] > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
