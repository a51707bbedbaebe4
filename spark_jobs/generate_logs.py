"""Synthetic homepage logs of a large fashion platform, generated in parallel by Spark.

Run as ``clickgraph generate`` or ``spark-submit spark_jobs/generate_logs.py --config FILE``.

Every value is a pure function of ``(seed, entity or event id)`` through ``xxhash64``, so
the output is deterministic for a seed whatever the number of executors or partitions, and
no driver-side loop touches users or events: the driver only computes a few numbers per
day. The log contract written here is documented in ``docs/log-schema.md``.

Planted structure (hidden from the output, visible to a model that reads the graph):

* every user has a latent taste community (``num_communities``); country, language and
  gender reveal it only partly; a share of users drift to another community mid-period;
* content and brands carry a style (a community); a user clicks content of their current
  taste and of their favourite brand far more often;
* a hidden share of users love video (device hints at it weakly);
* users differ in how readily they click at all (a per-user propensity on the logit,
  ``user_click_propensity_sd``), as on real platforms, where a user's past click rate is
  one of the strongest features and a new user's is unknown: the cold-start gap;
* click probability also falls with feed position (position bias) and content age, rises
  with a hidden per-content quality and slightly in the evening;
* users and content arrive every day, so each day has cold-start users with no history.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from dataclasses import dataclass

from clickgraph.core.config import Config, GenerateConfig

LOGS_FORMAT_VERSION = 1
CONTENT_TYPES = ["video", "editorial", "product_teaser", "brand_campaign", "collection"]
CONTENT_TYPE_WEIGHTS = [0.2, 0.2, 0.35, 0.15, 0.1]
COUNTRIES = ["DE", "FR", "NL", "IT", "ES", "PL", "SE", "CH"]
LANGUAGES = {"DE": "de", "FR": "fr", "NL": "nl", "IT": "it", "ES": "es", "PL": "pl",
             "SE": "sv", "CH": "de"}
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55+"]
AGE_WEIGHTS = [0.18, 0.34, 0.24, 0.14, 0.10]
DEVICES = ["ios", "android", "web"]
BRAND_TIERS = ["mass", "premium", "luxury"]
PRICE_BANDS = ["low", "mid", "high"]
BAD_ROW_KINDS = ["malformed", "missing_key", "unknown_event_type", "future_timestamp",
                 "ancient_timestamp", "duplicate", "wrong_type"]
DAY_MS = 86_400_000
MEAN_ACTIVITY = 0.15 + 0.85 / 3  # E[0.15 + 0.85 * U^2]


@dataclass(frozen=True)
class DayPlan:
    """What the driver decides per day: a few integers, never per user or event."""

    start_ms: list[int]  # [num_days] day start, ms since epoch (UTC)
    users_available: list[int]  # users with id < this have signed up by the day's end
    content_available: list[int]  # content with id < this was created before the day
    impression_draws: list[int]  # candidate impressions drawn (thinned by user activity)


def plan_days(g: GenerateConfig) -> DayPlan:
    start = dt.datetime.fromisoformat(g.start_date).replace(tzinfo=dt.UTC)
    start_ms = int(start.timestamp() * 1000)
    u0 = _initial(g.num_users, g.initial_user_fraction)
    k0 = _initial(g.num_content, g.initial_content_fraction)
    days, users, content, draws = [], [], [], []
    for d in range(g.num_days):
        days.append(start_ms + d * DAY_MS)
        n_users = u0 + math.ceil((d + 1) * (g.num_users - u0) / g.num_days)
        users.append(n_users)
        content.append(k0 + math.ceil(d * (g.num_content - k0) / g.num_days))
        weekday = (start + dt.timedelta(days=d)).weekday()
        weekly = 1.25 if weekday >= 5 else 1.0  # weekend traffic
        draws.append(int(round(n_users * g.impressions_per_user_day * weekly / MEAN_ACTIVITY)))
    return DayPlan(days, users, content, draws)


def _initial(total: int, fraction: float) -> int:
    return max(1, min(total, int(round(total * fraction))))


def time_of_day_quantiles(n: int = 1000) -> list[int]:
    """Inverse CDF of the daily traffic cycle, in ms after midnight (UTC ~ CET here).

    Traffic is low at night, with a lunch peak and a larger evening peak.
    """
    hours = [h / 4 for h in range(96)]
    weights = [0.15 + 0.9 * math.exp(-((h - 12.5) ** 2) / 3) + 1.6 * math.exp(-((h - 20.5) ** 2) / 4)
               + (0.35 if 7 <= h <= 23 else 0.0) for h in hours]
    total = sum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(acc)
    out, b = [], 0
    for i in range(n):
        q = (i + 0.5) / n
        while cdf[b] < q:
            b += 1
        lo = cdf[b - 1] if b else 0.0
        frac = (q - lo) / (cdf[b] - lo)
        out.append(int((b + frac) * 15 * 60 * 1000))
    return out


class _Rand:
    """Deterministic uniforms ``[0, 1)`` from ``xxhash64(seed, salt, key columns)``."""

    def __init__(self, seed: int):
        self.seed = seed

    def u(self, salt: str, *cols):
        from pyspark.sql import functions as F

        h = F.xxhash64(F.lit(self.seed), F.lit(salt), *cols)
        return F.shiftrightunsigned(h, 11).cast("double") / float(1 << 53)

    def index(self, salt: str, n, *cols):
        """Uniform integer in ``[0, n)``; ``n`` a Python int or a column."""
        from pyspark.sql import functions as F

        n_col = n if not isinstance(n, int) else F.lit(n)
        return F.floor(self.u(salt, *cols) * n_col).cast("long")

    def normal(self, salt: str, *cols):
        from pyspark.sql import functions as F

        u1 = 1.0 - self.u(salt + ".1", *cols)
        u2 = self.u(salt + ".2", *cols)
        return F.sqrt(-2.0 * F.log(u1)) * F.cos(2 * math.pi * u2)

    def choice(self, salt: str, values: list, weights: list[float] | None, *cols):
        """One of ``values`` with the given weights (uniform when ``None``)."""
        from pyspark.sql import functions as F

        weights = weights or [1.0] * len(values)
        r = self.u(salt, *cols)
        total, acc = sum(weights), 0.0
        expr = None
        for value, w in zip(values[:-1], weights[:-1]):
            acc += w / total
            expr = (F.when(r < acc, F.lit(value)) if expr is None
                    else expr.when(r < acc, F.lit(value)))
        last = F.lit(values[-1])
        return last if expr is None else expr.otherwise(last)


class LatentModel:
    """The hidden world: every attribute as a Spark column expression of an id column."""

    def __init__(self, g: GenerateConfig):
        self.g = g
        self.r = _Rand(g.seed)
        self.plan = plan_days(g)
        self.start_ms = self.plan.start_ms[0]
        self.u0 = _initial(g.num_users, g.initial_user_fraction)
        self.k0 = _initial(g.num_content, g.initial_content_fraction)
        self.brands_per_style = g.num_brands // g.num_communities

    # users ----------------------------------------------------------------
    def user_arrival_day(self, uid):
        from pyspark.sql import functions as F

        g = self.g
        new = F.floor((uid - self.u0) * g.num_days / max(1, g.num_users - self.u0))
        return F.when(uid < self.u0, F.lit(-1)).otherwise(new).cast("int")

    def user_signup_ms(self, uid):
        from pyspark.sql import functions as F

        day = self.user_arrival_day(uid)
        before = self.start_ms - (1 + self.r.index("signup.old", 730, uid)) * DAY_MS
        within = self.start_ms + day.cast("long") * DAY_MS
        offset = (self.r.u("signup.tod", uid) * 0.9 * DAY_MS).cast("long")
        return F.when(day < 0, before).otherwise(within) + offset

    def user_community(self, uid):
        return self.r.index("user.community", self.g.num_communities, uid)

    def user_taste(self, uid, day):
        """Community the user's taste follows on ``day`` (after drift, if any)."""
        from pyspark.sql import functions as F

        drifts = self.r.u("user.drifts", uid) < self.g.drifting_user_fraction
        drift_day = self.r.index("user.drift_day", self.g.num_days, uid)
        target = self.r.index("user.drift_to", self.g.num_communities, uid)
        return F.when(drifts & (day >= drift_day), target).otherwise(self.user_community(uid))

    def user_video_lover(self, uid):
        return self.r.u("user.video", uid) < self.g.video_lover_fraction

    def user_activity(self, uid):
        u = self.r.u("user.activity", uid)
        return 0.15 + 0.85 * u * u

    def user_propensity(self, uid):
        """The user's own click propensity, a term of the click logit (mean 0)."""
        return self.g.user_click_propensity_sd * self.r.normal("user.propensity", uid)

    def user_favourite_brand(self, uid):
        return self.user_community(uid) + self.g.num_communities * self.r.index(
            "user.fav_brand", self.brands_per_style, uid)

    def user_country(self, uid):
        from pyspark.sql import functions as F

        home = F.element_at(F.array(*[F.lit(c) for c in COUNTRIES]),
                            (self.user_community(uid) % len(COUNTRIES) + 1).cast("int"))
        other = self.r.choice("user.country", COUNTRIES, None, uid)
        return F.when(self.r.u("user.home", uid) < 0.55, home).otherwise(other)

    # content ----------------------------------------------------------------
    def content_style(self, cid):
        return cid % self.g.num_communities

    def content_created_ms(self, cid):
        from pyspark.sql import functions as F

        g = self.g
        jitter = (self.r.u("content.tod", cid) * DAY_MS).cast("long")
        old = self.start_ms - ((self.k0 - cid) * 60 * DAY_MS / self.k0).cast("long") + jitter
        day = F.floor((cid - self.k0) * g.num_days / max(1, g.num_content - self.k0))
        new = self.start_ms + day.cast("long") * DAY_MS + jitter
        return F.when(cid < self.k0, old).otherwise(new)

    def content_type(self, cid):
        return self.r.choice("content.type", CONTENT_TYPES, CONTENT_TYPE_WEIGHTS, cid)

    def content_brand(self, cid):
        from pyspark.sql import functions as F

        own_style = self.content_style(cid) + self.g.num_communities * self.r.index(
            "content.brand", self.brands_per_style, cid)
        anywhere = self.r.index("content.brand.any", self.g.num_brands, cid)
        return F.when(self.r.u("content.brand.own", cid) < 0.8, own_style).otherwise(anywhere)

    def content_quality(self, cid):
        return self.r.normal("content.quality", cid)

    # articles and brands ------------------------------------------------------
    def article_brand(self, aid):
        return aid % self.g.num_brands

    def brand_style(self, bid):
        return bid % self.g.num_communities


def _fmt(prefix: str, width: int, col):
    """Raw id ``prefix`` + zero-padded number (``U00000042``); ``lpad`` rather than
    ``format_string``, whose java.util.Formatter costs about a microsecond a row."""
    from pyspark.sql import functions as F

    return F.concat(F.lit(prefix), F.lpad(col.cast("string"), width, "0"))


USER_ID = ("U", 8)
CONTENT_ID = ("C", 7)
ARTICLE_ID = ("A", 7)
BRAND_ID = ("B", 5)
CATEGORY_ID = ("K", 3)


# --------------------------------------------------------------------------- entity tables


def users_df(spark, m: LatentModel):
    from pyspark.sql import functions as F

    uid = F.col("id")
    video = m.user_video_lover(uid)
    device_r = m.r.u("user.device", uid)
    device = (F.when(device_r < F.when(video, 0.45).otherwise(0.3), "ios")
              .when(device_r < F.when(video, 0.75).otherwise(0.6), "android").otherwise("web"))
    country = m.user_country(uid)
    lang = F.when(m.r.u("user.lang", uid) < 0.9,
                  F.element_at(F.create_map(*[F.lit(x) for kv in LANGUAGES.items() for x in kv]),
                               country)).otherwise("en")
    female_share = F.when(m.user_community(uid) % 2 == 0, 0.65).otherwise(0.45)
    gender = (F.when(m.r.u("user.gender", uid) < female_share, "f")
              .when(m.r.u("user.gender", uid) < female_share + 0.03, "x").otherwise("m"))
    return spark.range(m.g.num_users).select(
        _fmt(*USER_ID, uid).alias("user_id"),
        country.alias("country"),
        lang.alias("language"),
        device.alias("device"),
        m.r.choice("user.age", AGE_BANDS, AGE_WEIGHTS, uid).alias("age_band"),
        gender.alias("gender"),
        F.timestamp_millis(m.user_signup_ms(uid)).alias("signup_time"),
    )


def content_df(spark, m: LatentModel):
    from pyspark.sql import functions as F

    g = m.g
    cid = F.col("id")
    ctype = m.content_type(cid)
    brand = m.content_brand(cid)
    articles_per_brand = max(1, g.num_articles // g.num_brands)
    n_articles = (F.when(ctype == "product_teaser", 1 + m.r.index("content.n_art", 3, cid))
                  .when(ctype == "collection", 3 + m.r.index("content.n_art", 3, cid))
                  .otherwise(m.r.index("content.n_art", 2, cid)))
    candidates = F.array(*[
        _fmt(*ARTICLE_ID, brand + g.num_brands * m.r.index(f"content.art{i}", articles_per_brand, cid))
        for i in range(5)
    ])
    second_brand = m.r.index("content.brand2", g.num_brands, cid)
    brands = F.when(ctype == "collection",
                    F.array_distinct(F.array(_fmt(*BRAND_ID, brand), _fmt(*BRAND_ID, second_brand)))
                    ).otherwise(F.array(_fmt(*BRAND_ID, brand)))
    return spark.range(g.num_content).select(
        _fmt(*CONTENT_ID, cid).alias("content_id"),
        ctype.alias("content_type"),
        F.timestamp_millis(m.content_created_ms(cid)).alias("created_time"),
        brands.alias("brand_ids"),
        F.array_distinct(F.slice(candidates, 1, n_articles.cast("int"))).alias("article_ids"),
        _fmt(*CATEGORY_ID, m.r.index("content.category", g.num_categories, cid)).alias("category_id"),
    )


def articles_df(spark, m: LatentModel):
    from pyspark.sql import functions as F

    aid = F.col("id")
    return spark.range(m.g.num_articles).select(
        _fmt(*ARTICLE_ID, aid).alias("article_id"),
        _fmt(*BRAND_ID, m.article_brand(aid)).alias("brand_id"),
        _fmt(*CATEGORY_ID, m.r.index("article.category", m.g.num_categories, aid)).alias("category_id"),
        m.r.choice("article.price", PRICE_BANDS, [0.5, 0.35, 0.15], aid).alias("price_band"),
    )


def brands_df(spark, m: LatentModel):
    from pyspark.sql import functions as F

    bid = F.col("id")
    return spark.range(m.g.num_brands).select(
        _fmt(*BRAND_ID, bid).alias("brand_id"),
        F.format_string("Brand %d", bid).alias("name"),
        m.r.choice("brand.tier", BRAND_TIERS, [0.6, 0.3, 0.1], bid).alias("tier"),
    )


def categories_df(spark, m: LatentModel):
    from pyspark.sql import functions as F

    kid = F.col("id")
    groups = ["women", "men", "kids", "beauty", "home", "sports"]
    return spark.range(m.g.num_categories).select(
        _fmt(*CATEGORY_ID, kid).alias("category_id"),
        F.element_at(F.array(*[F.lit(x) for x in groups]), (kid % len(groups) + 1).cast("int"))
        .alias("group"),
    )


# --------------------------------------------------------------------------- events


def impressions_df(spark, m: LatentModel, with_truth: bool = False):
    """Homepage impressions with their click label (``p_click`` when ``with_truth``)."""
    from pyspark.sql import functions as F

    g, plan, r = m.g, m.plan, m.r
    max_draws = max(plan.impression_draws)
    arr = lambda xs: F.array(*[F.lit(x) for x in xs])  # noqa: E731
    tod = arr(time_of_day_quantiles())
    eid = F.col("id")
    df = spark.range(0, g.num_days * max_draws, numPartitions=_partitions(spark, g)).select(
        eid.alias("eid"), (eid / max_draws).cast("int").alias("day"), (eid % max_draws).alias("j"))
    day1 = (F.col("day") + 1).cast("int")
    df = df.where(F.col("j") < F.element_at(arr(plan.impression_draws), day1))
    df = df.withColumn("uid", r.index("imp.user", F.element_at(arr(plan.users_available), day1),
                                      F.col("eid")))
    df = df.where(r.u("imp.active", F.col("eid")) < m.user_activity(F.col("uid")))
    uid, day = F.col("uid"), F.col("day")
    day_start = F.element_at(arr(plan.start_ms), day1)
    ts = day_start + F.element_at(tod, (r.index("imp.tod", 1000, F.col("eid")) + 1).cast("int")) \
        + r.index("imp.jitter", 60_000, F.col("eid"))
    signup = m.user_signup_ms(uid)
    day_end = day_start + DAY_MS
    late = r.u("imp.late", F.col("eid")) * (day_end - signup - 60_000)
    after_signup = signup + 60_000 + late.cast("long")
    df = df.withColumn("ts_ms", F.when(ts > signup, ts).otherwise(after_signup))
    taste = m.user_taste(uid, day)
    style = F.when(r.u("imp.targeted", F.col("eid")) < g.targeted_feed_share, taste) \
        .otherwise(r.index("imp.style", g.num_communities, F.col("eid")))
    available = F.element_at(arr(plan.content_available), day1)
    # content of this style created before the day; newest ids are newest content
    n_style = F.floor((available - 1 - style) / g.num_communities) + 1
    recency = F.pow(r.u("imp.recency", F.col("eid")), 2.5)
    j = n_style - 1 - F.floor(n_style * recency)
    df = df.withColumn("cid", (style + g.num_communities * j).cast("long"))
    position = F.floor(g.feed_length * F.pow(r.u("imp.pos", F.col("eid")), 1.6))
    df = df.withColumn("position", position.cast("int"))
    cid = F.col("cid")
    taste_now = m.user_taste(uid, day)
    ctype = m.content_type(cid)
    age_days = (F.col("ts_ms") - m.content_created_ms(cid)) / DAY_MS
    hour = (F.col("ts_ms") - day_start) / 3_600_000
    logit = (F.lit(-2.6)
             + 1.6 * (m.content_style(cid) == taste_now).cast("double")
             + 1.0 * (m.content_brand(cid) == m.user_favourite_brand(uid)).cast("double")
             + 0.6 * (m.brand_style(m.content_brand(cid)) == taste_now).cast("double")
             + F.when(ctype == "video", F.when(m.user_video_lover(uid), 1.3).otherwise(-0.7)).otherwise(0.0)
             + m.user_propensity(uid)
             + 0.5 * m.content_quality(cid)
             - 0.45 * F.log2(1 + F.col("position"))
             - 0.08 * age_days
             + F.when((hour >= 19) & (hour < 23), 0.15).otherwise(0.0))
    p_click = 1 / (1 + F.exp(-logit))
    df = df.withColumn("p_click", p_click) if with_truth else df
    if with_truth:  # the same logit without its user x content terms: what no pair signal adds
        base = (F.lit(-2.6) + m.user_propensity(uid) + 0.5 * m.content_quality(cid)
                - 0.45 * F.log2(1 + F.col("position")) - 0.08 * age_days
                + F.when((hour >= 19) & (hour < 23), 0.15).otherwise(0.0))
        df = df.withColumn("p_click_no_pair", 1 / (1 + F.exp(-base)))
    df = df.withColumn("clicked", r.u("imp.click", F.col("eid")) < p_click)
    cols = [F.concat(F.lit("imp-"), F.col("eid").cast("string")).alias("event_id"),
            F.lit("impression").alias("event_type"), F.col("ts_ms"),
            _fmt(*USER_ID, uid).alias("user_id"), _fmt(*CONTENT_ID, cid).alias("content_id"),
            F.lit(None).cast("string").alias("brand_id"), F.col("position"), F.col("clicked"),
            F.lit(None).cast("long").alias("dwell_ms"),
            F.concat(_fmt(*USER_ID, uid), F.lit("-"), day.cast("string")).alias("session_id"),
            F.col("eid"), F.col("uid"), F.col("cid"), F.col("day")]
    if with_truth:
        cols += [F.col("p_click"), F.col("p_click_no_pair")]
    return df.select(*cols)


def events_df(spark, m: LatentModel):
    """All events (impressions, clicks, views, brand likes) in the log schema.

    Clicks and views are derived from clicked impressions in the same pass (one
    ``explode`` per impression), so the impression pipeline is computed once.
    """
    from pyspark.sql import functions as F

    r = m.r
    imp = impressions_df(spark, m)
    eid = F.col("eid")
    click_ts = F.col("ts_ms") + 2000 + r.index("click.delay", 20_000, eid)
    match = (m.content_style(F.col("cid")) == m.user_taste(F.col("uid"), F.col("day"))).cast("double")
    dwell = F.exp(F.log(F.lit(20_000.0)) + 0.5 * match + 0.8 * r.normal("view.dwell", eid))
    null = {"string": F.lit(None).cast("string"), "int": F.lit(None).cast("int"),
            "boolean": F.lit(None).cast("boolean"), "long": F.lit(None).cast("long")}

    def event(prefix, event_type, ts, position, clicked, dwell_ms):
        return F.struct(
            F.concat(F.lit(prefix), eid.cast("string")).alias("event_id"),
            F.lit(event_type).alias("event_type"), ts.alias("ts_ms"),
            F.col("user_id"), F.col("content_id"), null["string"].alias("brand_id"),
            position.alias("position"), clicked.alias("clicked"), dwell_ms.alias("dwell_ms"),
            F.col("session_id"))

    clicked = F.col("clicked")
    derived = imp.select(F.explode(F.array(
        event("imp-", "impression", F.col("ts_ms"), F.col("position"), clicked, null["long"]),
        F.when(clicked, event("clk-", "click", click_ts, F.col("position"), null["boolean"],
                              null["long"])),
        F.when(clicked, event("view-", "view", click_ts + 1000, null["int"], null["boolean"],
                              dwell.cast("long"))),
    )).alias("e")).where(F.col("e").isNotNull()).select("e.*")
    return derived.unionByName(brand_likes_df(spark, m))


def brand_likes_df(spark, m: LatentModel):
    from pyspark.sql import functions as F

    g, r = m.g, m.r
    max_likes = max(1, math.ceil(2 * g.likes_per_user))
    lid = F.col("id")
    df = spark.range(0, g.num_users * max_likes, numPartitions=_partitions(spark, g)).select(
        lid.alias("lid"), (lid / max_likes).cast("long").alias("uid"), (lid % max_likes).alias("j"))
    uid = F.col("uid")
    n_likes = r.index("like.n", max_likes + 1, uid)
    df = df.where(F.col("j") < n_likes)
    community_brand = m.user_community(uid) + g.num_communities * r.index(
        "like.cbrand", m.brands_per_style, F.col("lid"))
    pick = r.u("like.pick", F.col("lid"))
    brand = (F.when(pick < 0.5, m.user_favourite_brand(uid)).when(pick < 0.85, community_brand)
             .otherwise(r.index("like.any", g.num_brands, F.col("lid"))))
    end_ms = m.plan.start_ms[-1] + DAY_MS
    first = F.greatest(m.user_signup_ms(uid) + 60_000, F.lit(m.start_ms))
    ts = first + (r.u("like.ts", F.col("lid")) * (F.lit(end_ms) - first)).cast("long")
    day = F.floor((ts - m.start_ms) / DAY_MS).cast("int")
    return df.select(
        F.concat(F.lit("like-"), F.col("lid").cast("string")).alias("event_id"),
        F.lit("brand_like").alias("event_type"), ts.alias("ts_ms"),
        _fmt(*USER_ID, uid).alias("user_id"), F.lit(None).cast("string").alias("content_id"),
        _fmt(*BRAND_ID, brand).alias("brand_id"), F.lit(None).cast("int").alias("position"),
        F.lit(None).cast("boolean").alias("clicked"), F.lit(None).cast("long").alias("dwell_ms"),
        F.concat(_fmt(*USER_ID, uid), F.lit("-"), day.cast("string")).alias("session_id"),
    )


def _partitions(spark, g: GenerateConfig) -> int:
    if g.num_output_files > 0:
        return g.num_output_files
    return max(2, spark.sparkContext.defaultParallelism)


def conform(df, schema):
    """Select ``schema``'s columns, in its order, cast to its types."""
    from pyspark.sql import functions as F

    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def with_day_column(df, g: GenerateConfig):
    """Add ``dt`` (YYYY-MM-DD, UTC), the day partition of the log files.

    Integer arithmetic and a lookup instead of formatting a timestamp per row; the extra
    last entry holds clicks a few seconds past the period's last midnight.
    """
    from pyspark.sql import functions as F

    start = dt.date.fromisoformat(g.start_date)
    days = F.array(*[F.lit((start + dt.timedelta(days=d)).isoformat()) for d in range(g.num_days + 1)])
    start_ms = plan_days(g).start_ms[0]
    index = F.floor((F.col("ts_ms") - start_ms) / DAY_MS).cast("int") + 1
    return df.withColumn("dt", F.element_at(days, index))


def json_lines(events, g: GenerateConfig):
    """Events as JSON text lines (``value``, ``dt``), with bad lines mixed in on request.

    Returns:
        ``(lines_df, bad_df)`` where ``bad_df`` (or ``None``) has the injected lines and
        their ``kind``, for counting.
    """
    from pyspark.sql import functions as F

    fields = [c for c in events.columns if c != "dt"]
    good = events.select(F.to_json(F.struct(*fields)).alias("value"), "dt")
    if g.bad_row_fraction <= 0:
        return good, None
    r = _Rand(g.seed)
    key = F.col("event_id")
    rate = g.bad_row_fraction / (1 - g.bad_row_fraction)  # bad / (good + bad) = fraction
    picked = events.where(r.u("bad.pick", key) < rate).withColumn(
        "kind", F.element_at(F.array(*[F.lit(k) for k in BAD_ROW_KINDS]),
                             (r.index("bad.kind", len(BAD_ROW_KINDS), key) + 1).cast("int")))

    def as_json(**replace):
        return F.to_json(F.struct(*[replace.get(c, F.col(c)).alias(c) for c in fields]))

    full = F.to_json(F.struct(*fields))
    kind = F.col("kind")
    value = (
        F.when(kind == "malformed", F.substring(full, 1, 40))
        .when(kind == "missing_key", as_json(user_id=F.lit(None).cast("string")))
        .when(kind == "unknown_event_type",
              as_json(event_type=F.element_at(F.array(F.lit("hover"), F.lit("impression_v2")),
                                              (r.index("bad.type", 2, key) + 1).cast("int"))))
        .when(kind == "future_timestamp",
              as_json(ts_ms=F.col("ts_ms") + F.lit(80 * 365 * DAY_MS)))
        .when(kind == "ancient_timestamp", as_json(ts_ms=F.col("ts_ms") - F.lit(35 * 365 * DAY_MS)))
        .when(kind == "wrong_type",
              as_json(ts_ms=F.date_format(F.timestamp_millis(F.col("ts_ms")), "dd/MM/yyyy HH:mm")))
        .otherwise(full)  # duplicate: the very same line again
    )
    bad = picked.select(value.alias("value"), "dt", "kind")
    return good.unionByName(bad.drop("kind")), bad


# --------------------------------------------------------------------------- the job


def run(spark, cfg: Config, out_url: str | None = None, log=print) -> dict:
    """Generate logs into ``out_url`` (default ``paths.logs``); returns the manifest."""
    from pyspark.sql import functions as F

    from clickgraph.core import fs
    from clickgraph.core.manifest import new_manifest, write_manifest
    from spark_jobs import log_schema

    g = cfg.generate
    out_url = out_url or cfg.paths.stage("logs")
    m = LatentModel(g)
    with fs.staged_output(out_url) as stage:
        target = fs.spark_url(stage)
        for name, build in [("users", users_df), ("content", content_df), ("articles", articles_df),
                            ("brands", brands_df), ("categories", categories_df)]:
            table = conform(build(spark, m), log_schema.ENTITY_TABLES[name])
            table.coalesce(1).write.parquet(f"{target}/entities/{name}")
        events = with_day_column(conform(events_df(spark, m), log_schema.EVENTS), g)
        stats_source = events
        if "parquet" in g.formats:
            events.write.partitionBy("dt").parquet(f"{target}/events/parquet")
            # later passes read the columnar copy instead of generating again
            stats_source = spark.read.parquet(f"{target}/events/parquet")
            events = stats_source
        bad_counts: dict[str, int] = {}
        if "json" in g.formats:
            lines, bad = json_lines(events, g)
            lines.write.partitionBy("dt").text(f"{target}/events/json")
            if bad is not None:
                bad_counts = {row["kind"]: row["n"] for row in
                              bad.groupBy("kind").agg(F.count("*").alias("n")).collect()}
        stats = stats_source.groupBy("event_type").agg(
            F.count("*").alias("n"), F.min("ts_ms").alias("lo"), F.max("ts_ms").alias("hi")).collect()
        counts = {row["event_type"]: row["n"] for row in stats}
        n_events = sum(counts.values())
        start = dt.date.fromisoformat(g.start_date)
        manifest = new_manifest(
            "logs", LOGS_FORMAT_VERSION, cfg, ("generate",),
            seed=g.seed,
            formats=list(g.formats),
            event_counts=counts,
            events_total=n_events,
            entity_counts={"users": g.num_users, "content": g.num_content,
                           "articles": g.num_articles, "brands": g.num_brands,
                           "categories": g.num_categories},
            time_range={"min_ts_ms": min(r["lo"] for r in stats), "max_ts_ms": max(r["hi"] for r in stats)},
            days=[(start + dt.timedelta(days=d)).isoformat() for d in range(g.num_days)],
            bad_rows={"fraction_requested": g.bad_row_fraction, "by_kind": bad_counts,
                      "total": sum(bad_counts.values())},
            json_lines_total=n_events + sum(bad_counts.values()) if "json" in g.formats else None,
            layout={"events_json": "events/json/dt=YYYY-MM-DD/*.txt",
                    "events_parquet": "events/parquet/dt=YYYY-MM-DD/*.parquet",
                    "entities": "entities/{users,content,articles,brands,categories}/*.parquet"},
        )
        fs.write_text(fs.join(stage, "_config.yaml"), cfg.to_yaml())
        write_manifest(stage, manifest)
    log(f"generate: {n_events:,} events ({', '.join(f'{k}={v:,}' for k, v in sorted(counts.items()))})"
        + (f", {sum(bad_counts.values()):,} bad JSON lines" if bad_counts else "")
        + f" -> {out_url}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``spark-submit spark_jobs/generate_logs.py --config FILE [--set k=v ...]``."""
    import argparse

    from clickgraph.core.config import ConfigError, load_config
    from spark_jobs.session import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="output URL (default: paths.logs)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    spark = get_spark(cfg.spark, "generate")
    run(spark, cfg, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
