-- `write_messages` (0009) runs its statements with the plans it made once
-- per connection. Left to `plan_cache_mode = auto`, PL/pgSQL plans each
-- statement again for every call whose arrays are small (a custom plan
-- looks cheaper than the generic one for a few rows), and at a few
-- messages per call that planning was most of the call: measured on this
-- machine, a 3-message call took 1.4 ms with custom plans and 0.8 ms with
-- the generic ones, a 100-message call 3.5 and 3.1 ms. Every statement in
-- it looks rows up by primary key or inserts them, so the generic plan is
-- the right one at every size.
ALTER FUNCTION write_messages(BIGINT[], TEXT[], BIGINT[], TEXT[], UUID[], TEXT[], TEXT[], TEXT[])
    SET plan_cache_mode = force_generic_plan;
