-- pg_deploy install script. Built by the Makefile from extension/sql/*.sql in name order: edit the pieces.
\echo Use "CREATE EXTENSION pg_deploy" to load this file. \quit
