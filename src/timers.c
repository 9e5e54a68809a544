/* Wall-clock timers per op category. */
#include "nanomoe/timers.h"

#include <omp.h>

static const char *NAMES[NM_T_COUNT] = {"embedding", "layernorm", "attn proj", "attn core",
                                        "router",    "permute",   "experts",   "resid+drop",
                                        "head+loss", "all-to-all", "all-reduce", "optimizer", "data"};

const char *nm_timer_name(nm_timer_id id) { return NAMES[id]; }

double nm_now(void) { return omp_get_wtime(); }
