/* Continuing a run: checkpoint discovery, configuration checks, pruning. */
#include "nanomoe/resume.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* "ckpt_" + 8 digits + ".h5": the names train writes (a .tmp never matches). */
static int64_t ckpt_step(const char *name) {
    if (strncmp(name, "ckpt_", 5) != 0 || strlen(name) != 16 || strcmp(name + 13, ".h5") != 0) return -1;
    int64_t s = 0;
    for (int i = 5; i < 13; i++) {
        if (name[i] < '0' || name[i] > '9') return -1;
        s = s * 10 + (name[i] - '0');
    }
    return s;
}

static int cmp_desc(const void *a, const void *b) {
    int64_t x = ckpt_step(strrchr(*(char *const *)a, '/') + 1), y = ckpt_step(strrchr(*(char *const *)b, '/') + 1);
    return (x < y) - (x > y);
}

int nm_ckpt_list(const char *dir, MPI_Comm comm, char ***paths) {
    int rank, n = 0, cap = 0;
    char **list = NULL;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    /* rank 0 reads the directory: one view of it for every rank */
    size_t blob_len = 0;
    char *blob = NULL;
    if (rank == 0) {
        DIR *d = opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (ckpt_step(e->d_name) < 0) continue;
            size_t len = strlen(dir) + strlen(e->d_name) + 2;
            char *p = nm_malloc(len);
            snprintf(p, len, "%s/%s", dir, e->d_name);
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                char **nl = realloc(list, sizeof(char *) * (size_t)cap);
                if (!nl) NM_ABORT("out of memory listing %s", dir);
                list = nl;
            }
            list[n++] = p;
        }
        if (d) closedir(d);
        qsort(list, (size_t)n, sizeof *list, cmp_desc);
        for (int i = 0; i < n; i++) blob_len += strlen(list[i]) + 1;
        blob = nm_malloc(blob_len + 1);
        size_t o = 0;
        for (int i = 0; i < n; i++) {
            memcpy(blob + o, list[i], strlen(list[i]) + 1);
            o += strlen(list[i]) + 1;
        }
    }
    long hdr[2] = {n, (long)blob_len};
    NM_MPI_CHECK(MPI_Bcast(hdr, 2, MPI_LONG, 0, comm));
    if (rank != 0) {
        n = (int)hdr[0];
        blob_len = (size_t)hdr[1];
        blob = nm_malloc(blob_len + 1);
    }
    NM_MPI_CHECK(MPI_Bcast(blob, (int)blob_len, MPI_CHAR, 0, comm));
    if (rank != 0) {
        list = nm_calloc((size_t)(n ? n : 1), sizeof(char *));
        size_t o = 0;
        for (int i = 0; i < n; i++) {
            size_t len = strlen(blob + o) + 1;
            list[i] = nm_malloc(len);
            memcpy(list[i], blob + o, len);
            o += len;
        }
    }
    free(blob);
    *paths = list;
    return n;
}

void nm_ckpt_list_free(char **paths, int n) {
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

int nm_resume_key_free(const char *name) {
    static const char *FREE[] = {"max_iters",     "lr_schedule",    "warmup_iters", "min_lr",       "eval_interval",
                                 "eval_iters",    "log_interval",   "ckpt_interval", "stats_interval", "keep_last",
                                 "out_dir",       "resume",         "expert_parallel", "grad_chunks", "data"};
    for (size_t i = 0; i < sizeof FREE / sizeof *FREE; i++)
        if (strcmp(name, FREE[i]) == 0) return 1;
    return 0;
}

int nm_resume_check_config(const nm_config *run, const nm_config *ck, const char *path, nm_error *err) {
    for (int i = 0; i < nm_config_nkeys(); i++) {
        const nm_config_key *k = nm_config_key_at(i);
        char a[NM_PATH_MAX], b[NM_PATH_MAX];
        nm_config_format(run, k, a, sizeof a);
        nm_config_format(ck, k, b, sizeof b);
        if (strcmp(a, b) == 0) continue;
        if (k->model_defining)
            return nm_fail(err, "resume: %s=%s in this run's config but %s=%s in checkpoint '%s' (keys that define the "
                           "model must match)",
                           k->name, a, k->name, b, path);
        if (!nm_resume_key_free(k->name))
            nm_warn0("resume: %s changes from %s (checkpoint) to %s: the continued run will not be the one an "
                     "uninterrupted run would have been",
                     k->name, b, a);
    }
    return 0;
}

void nm_ckpt_prune(const char *dir, int keep, MPI_Comm comm) {
    if (keep <= 0) return;
    char **paths;
    int n = nm_ckpt_list(dir, comm, &paths), rank;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    if (rank == 0)
        for (int i = keep; i < n; i++)
            if (unlink(paths[i]) != 0) nm_warn0("could not remove old checkpoint %s", paths[i]);
    nm_ckpt_list_free(paths, n);
}
