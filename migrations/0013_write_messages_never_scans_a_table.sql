-- `write_messages` (0012) finds every row it reads or changes through an
-- index. Its statements run generic plans (0010), made for UNNEST's
-- default estimate of 10 rows, and for two of them the planner compared
-- ten primary-key probes with one sequential scan of `channel_members`
-- feeding a hash join: the membership check, and the writers' read
-- pointers. While the table is small (at 2,000 rows the scan won, at
-- 4,000 not), and depending on which tables had been analyzed, every call
-- read the whole table. With one channel of 2,000 members (bench/run's
-- fan-out) that was half of a one-message call's CPU: measured with
-- pgbench on the 2-core machine, without the commit's flush, 0.78-0.83 ms
-- a call before and 0.41 ms after.
--
-- Every table the function touches is reached by primary key, so a scan is
-- never the better plan for the few rows a call names; turning scans off
-- for the function alone leaves the planner the index paths. A setting,
-- like 0010's, so the body stays 0012's: sessions already running it
-- plan it again at their next call.
ALTER FUNCTION write_messages(BIGINT[], TEXT[], BIGINT[], INT[], BIGINT[], INT[], TEXT[], UUID[], TEXT[], TEXT[], TEXT[], BOOLEAN, INT[])
    SET enable_seqscan = off;
