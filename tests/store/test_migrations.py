"""Migrations at start: a database at the newest revision is left alone without Alembic,
one behind is brought up to date."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from sqlalchemy import inspect

from connector.store.database import _MIGRATIONS, head_revision, open_database


def test_the_head_read_from_the_files_is_alembic_s() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()


def _open_in_a_new_process(url: str) -> str:
    """What a fresh process opening ``url`` imported and found (Alembic's modules stay
    loaded once imported, so this process cannot tell)."""
    script = textwrap.dedent(
        f"""
        import sys
        from connector.store.database import open_database
        db = open_database({url!r})
        print(db.revision(), "alembic" in sys.modules)
        db.close()
        """
    )
    done = subprocess.run(  # this interpreter and a script of the test's own
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


def test_a_database_at_the_head_opens_without_alembic(database_url: str) -> None:
    assert _open_in_a_new_process(database_url) == f"{head_revision()} True"  # made
    assert _open_in_a_new_process(database_url) == f"{head_revision()} False"  # opened


def test_a_database_one_revision_behind_is_brought_up_to_date(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    db = open_database(database_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
        behind = db.revision()
        assert behind is not None and behind != head_revision()
        newest_tables = set(inspect(db.engine).get_table_names())
    finally:
        db.close()
    db = open_database(database_url)
    try:
        assert db.revision() == head_revision()
        assert set(inspect(db.engine).get_table_names()) > newest_tables  # 0020's table back
    finally:
        db.close()
