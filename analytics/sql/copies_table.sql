-- `_copies`: the spans landed more than once (span_copies.sql and the like), found once
-- and then used by every view and query of the connection until the files change (an
-- analytics connection re-plans then), or twice by the session index build.
CREATE OR REPLACE TEMP TABLE _copies AS {{body}};
