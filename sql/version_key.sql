-- version_key: the natural order of versions and the validation of their spelling.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- Natural order: digit runs compare as numbers, digits sort before letters, separators before digits.
SELECT v FROM unnest(ARRAY['10', '2', '1.10', '1.9', '1.2.3', '1', '1a', '1.0', 'a1', 'A1', '0001_x', '20240101',
                           '9', '1-rc', 'b', '1.9.9', '100', '1_0'])
    AS v ORDER BY deploy.version_key(v) COLLATE "C", v;

-- The key itself (documented: two length digits then the number without leading zeros).
SELECT deploy.version_key('1.10') AS k1, deploy.version_key('0042') AS k2, deploy.version_key('v2') AS k3;

-- Leading zeros give the same key: such spellings are ambiguous (register refuses the second, PD008).
SELECT deploy.version_key('010') = deploy.version_key('10') AS same_key,
       deploy.version_key('0') = deploy.version_key('000') AS zeros;

-- Immutable, strict and parallel safe.
SELECT provolatile, proisstrict, proparallel FROM pg_proc WHERE oid = 'deploy.version_key(text)'::regprocedure;
SELECT deploy.version_key(NULL) IS NULL AS null_in_null_out;

-- Longest valid version: 64 characters.
SELECT length(deploy.version_key(repeat('a', 64))) AS len64;

-- Invalid versions: each a 22023 with a message saying what is wrong.
SELECT deploy.version_key('');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key('1 0');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key(' 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key(E'1\n2');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key(E'1\t');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key(repeat('1', 65));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key('1/2');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key('ü1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key('.1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.version_key('-1');
\echo :LAST_ERROR_SQLSTATE
