"""Source queries are checked with a real parser at publish: one read-only SELECT only."""

from __future__ import annotations

import pytest

from connector.errors import ConfigError, InvalidRequest
from connector.sources.sql import SqlConnection, SqlSources
from connector.sources.sql_query import MAX_QUERY_CHARS, validate_query

BOTH = ["postgres", "mysql"]


def test_valid_query_output_columns_are_computed() -> None:
    query = validate_query(
        "SELECT id, Name, upper(city) AS City, count(*) AS n FROM t GROUP BY 1, 2, 3",
        "postgres",
    )
    # PostgreSQL folds unquoted names to lower case, as it will report them.
    assert query.columns == ("id", "name", "city", "n")
    assert validate_query('SELECT "Mixed" FROM t', "postgres").columns == ("Mixed",)
    assert validate_query("SELECT `Name`, b AS c FROM t", "mysql").columns == ("Name", "c")
    union = validate_query("SELECT a, b FROM t UNION SELECT c, d FROM u", "postgres")
    assert union.columns == ("a", "b")


def test_checked_rendering_is_what_runs_without_comments() -> None:
    query = validate_query("SELECT a /*! , SLEEP(5) */ FROM t -- trailing\n", "mysql")
    assert query.text == "SELECT a FROM t"
    assert len(query.sha256) == 64


@pytest.mark.parametrize("dialect", BOTH)
def test_fields_mismatch_refused_naming_the_difference(dialect: str) -> None:
    text = "SELECT id, city FROM t"
    validate_query(text, dialect, ["id", "city"])
    with pytest.raises(InvalidRequest, match=r"outputs 'city' not in fields.*'name' the query"):
        validate_query(text, dialect, ["id", "name"])
    with pytest.raises(InvalidRequest, match=r"another order; list them as \['id', 'city'\]"):
        validate_query(text, dialect, ["city", "id"])


REFUSED_BOTH = [
    ("INSERT INTO t VALUES (1)", "must be a SELECT; a INSERT"),
    ("UPDATE t SET a = 1", "must be a SELECT; a UPDATE"),
    ("DELETE FROM t", "must be a SELECT; a DELETE"),
    ("DROP TABLE t", "must be a SELECT; a DROP"),
    ("CREATE TABLE x (a INT)", "must be a SELECT; a CREATE"),
    ("ALTER TABLE t ADD COLUMN b INT", "must be a SELECT; a ALTER"),
    ("TRUNCATE TABLE t", "must be a SELECT"),
    ("CALL p()", "must be a SELECT"),
    ("SET autocommit = 1", "must be a SELECT; a SET"),
    ("SELECT a FROM t; DELETE FROM t", "exactly one statement; found 2"),
    ("SELECT a FROM t; SELECT b FROM t", "exactly one statement; found 2"),
    ("SELECT a FROM t FOR UPDATE", "locking clause"),
    ("SELECT a FROM (SELECT a FROM t FOR UPDATE) AS s", "locking clause"),
    ("SELECT * FROM t", r"may not SELECT \*"),
    ("SELECT t.* FROM t", r"may not SELECT \*"),
    ("SELECT a FROM t UNION SELECT * FROM u", r"may not SELECT \*"),
    ("SELECT my_function(a) AS x FROM t", r"calls MY_FUNCTION\(\)"),
    ("SELECT a FROM t WHERE a = my_function(1)", r"calls MY_FUNCTION\(\)"),
    ("SELECT count(*) FROM t", "has no name; give it one with AS"),
    ("SELECT a, b AS a FROM t", "names the output column 'a' twice"),
    ("SELEC a FROM t", "is not valid SQL"),
    ("SELECT a FROM t WHERE (", "is not valid SQL"),
    ("SELECT 'unterminated FROM t", "is not valid SQL"),
    ("", "is empty"),
    ("  ;  ", "exactly one statement; found 0"),
    # The clock and randomness, named by kind (PostgreSQL's now() is CURRENT_TIMESTAMP to
    # the parser: the message must not name a function the user did not write).
    ("SELECT a FROM t WHERE d < now()", "reads the clock or draws random values"),
    ("SELECT a FROM t WHERE d < CURRENT_DATE", "reads the clock or draws random values"),
    ("SELECT a FROM t WHERE d < current_timestamp", "reads the clock or draws random values"),
    ("SELECT a FROM t WHERE d < localtimestamp", "reads the clock or draws random values"),
    ("SELECT a FROM t WHERE d < sysdate()", "reads the clock or draws random values"),
    ("SELECT a FROM t ORDER BY random()", "reads the clock or draws random values"),
    ("SELECT a FROM t WHERE d < unix_timestamp()", "reads the clock or draws random values"),
]

REFUSED_POSTGRES = [
    ("SELECT pg_read_file('/etc/passwd') AS x", r"calls PG_READ_FILE\(\)"),
    ("SELECT pg_sleep(10) AS x", r"calls PG_SLEEP\(\)"),
    ("SELECT lo_import('/etc/passwd') AS x", r"calls LO_IMPORT\(\)"),
    ("SELECT a FROM dblink('host=x', 'select 1') AS d(a int)", r"calls DBLINK\(\)"),
    ("SELECT nextval('s') AS x", r"calls NEXTVAL\(\)"),
    ("SELECT setval('s', 1) AS x", r"calls SETVAL\(\)"),
    ("SELECT set_config('role', 'x', false) AS x", r"calls SET_CONFIG\(\)"),
    ("SELECT a FROM generate_series(1, 10) AS a", r"calls .*GENERATE_SERIES"),
    ("SELECT a FROM t FOR SHARE", "locking clause"),
    ("SELECT a FROM t WHERE d < clock_timestamp()", "reads the clock or draws random values"),
    ("SELECT gen_random_uuid() AS x", "reads the clock or draws random values"),
    ("SELECT a INTO b FROM t", "contains INTO"),
    ("WITH d AS (DELETE FROM t RETURNING a) SELECT a FROM d", "contains a DELETE"),
    ("WITH d AS (UPDATE t SET a = 1 RETURNING a) SELECT a FROM d", "contains a UPDATE"),
    ("COPY t TO STDOUT", "must be a SELECT; a COPY"),
    ("COPY (SELECT a FROM t) TO '/tmp/x'", "must be a SELECT; a COPY"),
    ("SELECT a FROM t WHERE b = $1", "contains a"),
    ("SELECT usename, passwd FROM pg_shadow", "reads the database's own catalog"),
    ("SELECT rolname FROM PG_CATALOG.pg_authid", "reads the database's own catalog"),
    ("SELECT a FROM t JOIN pg_roles AS r ON TRUE", "reads the database's own catalog"),
    ("SELECT table_name FROM information_schema.tables", "reads the database's own catalog"),
]

REFUSED_MARIADB = [
    ("SELECT LOAD_FILE('/etc/passwd') AS x", r"calls LOAD_FILE\(\)"),
    ("SELECT SLEEP(10) AS x", r"calls SLEEP\(\)"),
    ("SELECT BENCHMARK(1000000, md5('x')) AS x", r"calls BENCHMARK\(\)"),
    ("SELECT a FROM t LOCK IN SHARE MODE", "locking clause"),
    ("SELECT a FROM t WHERE d < curdate()", "reads the clock or draws random values"),
    ("SELECT uuid() AS x", "reads the clock or draws random values"),
    ("SELECT rand() AS x", "reads the clock or draws random values"),
    ("SELECT @v := a AS x FROM t", "variable"),
    ("SELECT @@version AS x", "session variable"),
    ("SELECT a INTO OUTFILE '/tmp/x' FROM t", "is not valid SQL"),
    ("LOAD DATA INFILE '/etc/passwd' INTO TABLE t", "(must be a SELECT|is not valid SQL)"),
    ("SELECT user, password FROM mysql.user", "reads the database's own catalog"),
    ("SELECT a FROM performance_schema.threads", "reads the database's own catalog"),
    ("DO SLEEP(5)", "(must be a SELECT|is not valid SQL)"),
]


@pytest.mark.parametrize("dialect", BOTH)
@pytest.mark.parametrize(("text", "why"), REFUSED_BOTH)
def test_refused_in_both_dialects(dialect: str, text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^source.query .*{why}"):
        validate_query(text, dialect)


@pytest.mark.parametrize(("text", "why"), REFUSED_POSTGRES)
def test_refused_postgres(text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^source.query .*{why}"):
        validate_query(text, "postgres")


@pytest.mark.parametrize(("text", "why"), REFUSED_MARIADB)
def test_refused_mariadb(text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^source.query .*{why}"):
        validate_query(text, "mysql")


@pytest.mark.parametrize("dialect", BOTH)
def test_enormous_query_refused_before_parsing(dialect: str) -> None:
    text = "SELECT a FROM t WHERE a IN ({})".format(",".join(["1"] * MAX_QUERY_CHARS))  # noqa: S608
    with pytest.raises(InvalidRequest, match=f"at most {MAX_QUERY_CHARS} are accepted"):
        validate_query(text, dialect)


def test_deeply_nested_query_refused() -> None:
    text = "SELECT " + "(" * 5000 + "1" + ")" * 5000 + " AS a"
    with pytest.raises(InvalidRequest, match=r"^source\.query "):
        validate_query(text, "postgres")


def test_connection_not_configured_refused_at_publish() -> None:
    sources = SqlSources({})
    with pytest.raises(InvalidRequest, match=r"'orders' is not configured.*\[sources.orders\]"):
        sources.check("orders", "SELECT a FROM t", ["a"])


def test_connection_repr_and_errors_hide_the_password() -> None:
    connection = SqlConnection("orders", "postgresql://reader:hunter2@db.example:5432/shop")
    assert "hunter2" not in repr(connection)
    assert "***" in repr(connection)
    assert connection.dialect == "postgres"
    assert SqlConnection("m", "mariadb://root@127.0.0.1/test").dialect == "mysql"


@pytest.mark.parametrize(
    ("url", "extra", "why"),
    [
        ("sqlite:///x.db", {}, "not supported"),
        ("not a url", {}, "not a database URL"),
        ("postgresql://h/db", {"pool_size": 0}, "pool_size must be a positive integer"),
        ("postgresql://h/db", {"statement_timeout_seconds": 0}, "statement_timeout_seconds"),
    ],
)
def test_connection_settings_checked(url: str, extra: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        SqlConnection("x", url, **extra)  # type: ignore[arg-type]
