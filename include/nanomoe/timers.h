/* Wall-clock time per op category, accumulated over steps (for `nanomoe bench`). */
#ifndef NANOMOE_TIMERS_H
#define NANOMOE_TIMERS_H

#include <stddef.h>

typedef enum {
    NM_T_EMBED,
    NM_T_LAYERNORM,
    NM_T_ATTN_PROJ,  /* qkv and out projections */
    NM_T_ATTN_CORE,  /* scores, softmax, weighted sum */
    NM_T_ROUTER,     /* router logits, top-k, gates */
    NM_T_PERMUTE,    /* token permutation into expert groups and the gated combine */
    NM_T_EXPERTS,    /* expert FFNs */
    NM_T_RESIDUAL,   /* residual adds and dropout */
    NM_T_HEAD,       /* final norm, head and cross-entropy */
    NM_T_ALLTOALL,   /* token exchange of the MoE layers */
    NM_T_ALLREDUCE,  /* gradient and statistics reductions */
    NM_T_OPTIMIZER,
    NM_T_DATA,
    NM_T_COUNT
} nm_timer_id;

typedef struct nm_timers {
    double sec[NM_T_COUNT];
} nm_timers;

const char *nm_timer_name(nm_timer_id id);
double nm_now(void);
/* Adds the time since *t0 to timer id of t (skipped when t is NULL) and
 * restarts the clock: consecutive regions are timed by one lap each. */
void nm_timer_lap(nm_timers *t, nm_timer_id id, double *t0);

/* "7m12s", "1h03m", "42s" ("?" when unknown). */
void nm_format_duration(double sec, char *buf, size_t n);
/* 2409025 -> "2,409,025". */
void nm_format_count(double v, char *buf, size_t n);

#endif
