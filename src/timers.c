/* Wall-clock timers per op category. */
#include "nanomoe/timers.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>

static const char *NAMES[NM_T_COUNT] = {"embedding", "layernorm", "attn proj", "attn core",
                                        "router",    "permute",   "experts",   "resid+drop",
                                        "head+loss", "all-to-all", "all-reduce", "optimizer", "data"};

const char *nm_timer_name(nm_timer_id id) { return NAMES[id]; }

double nm_now(void) { return omp_get_wtime(); }

void nm_timer_lap(nm_timers *t, nm_timer_id id, double *t0) {
    double now = nm_now();
    if (t) t->sec[id] += now - *t0;
    *t0 = now;
}

void nm_format_duration(double sec, char *buf, size_t n) {
    if (!(sec >= 0) || sec > 1e8) {
        snprintf(buf, n, "?");
        return;
    }
    long s = (long)(sec + 0.5);
    if (s >= 3600) snprintf(buf, n, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else if (s >= 60) snprintf(buf, n, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, n, "%lds", s);
}

void nm_format_count(double v, char *buf, size_t n) {
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%.0f", v);
    size_t len = strlen(tmp), o = 0;
    for (size_t i = 0; i < len && o + 2 < n; i++) {
        if (i && (len - i) % 3 == 0 && tmp[i - 1] != '-') buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = '\0';
}
