-- OPTIONAL: a read-only role for analysts and BI tools, for a ClickHouse SERVER with SQL-driven access
-- control. Not for embedded chDB: it has no writable access storage, so these statements fail there.
-- Applied only when migrations run with the optional files (discover(include_optional=True)); the
-- user running it needs access management (`access_management` = 1 in users.xml, or
-- GRANT ACCESS MANAGEMENT ON *.*). Guide: schemas/README.md, section "Read-only analyst role".
--
-- What an analyst gets:
--   * SELECT on every table and view of THIS database (`ON *` = the database the migration runs in,
--     TOUCHLINE_CLICKHOUSE_DATABASE), including tables added later. Nothing else: no INSERT, ALTER,
--     CREATE, DROP, TRUNCATE, no table functions (file, url, s3 need SOURCES grants).
--   * readonly = 2, pinned with a CONST constraint: reads only; per-query settings that clients
--     and Grafana send (max_execution_time, output formats) are allowed, `readonly` itself cannot be
--     lowered by the role, the user or a query. allow_ddl = 0 is pinned as a second lock.
--   * max_execution_time defaults to 300 s (a client may change it).
-- Check on the server:  SHOW GRANTS FOR touchline_analyst;
--                       SHOW CREATE SETTINGS PROFILE touchline_analyst_profile;

CREATE SETTINGS PROFILE IF NOT EXISTS touchline_analyst_profile
SETTINGS
    readonly = 2 CONST,
    allow_ddl = 0 CONST,
    max_execution_time = 300;

CREATE ROLE IF NOT EXISTS touchline_analyst SETTINGS PROFILE 'touchline_analyst_profile';

GRANT SELECT ON * TO touchline_analyst;

-- A user for one analyst (template; run by hand with a real name and password, never commit one).
-- The profile is attached to the user too, so `SET ROLE NONE` cannot shed the read-only settings
-- (it would shed the SELECT grant as well).
--
-- CREATE USER IF NOT EXISTS analyst_jane
--     IDENTIFIED WITH sha256_password BY '<choose-a-password>'
--     DEFAULT ROLE touchline_analyst
--     SETTINGS PROFILE 'touchline_analyst_profile';
-- GRANT touchline_analyst TO analyst_jane;
