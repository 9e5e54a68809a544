/* Continuing a run: run identity, checkpoint discovery, configuration
 * checks, pruning, moving an old run aside. File-system facts are decided on
 * rank 0 and broadcast, so every rank acts on one view of the directory. */
#include "nanomoe/resume.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nanomoe/agree.h"
#include "nanomoe/h5util.h"
#include "nanomoe/rng.h"

void nm_run_id_new(char *out, size_t n) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y%m%dT%H%M%SZ", &tm);
    /* 64 random bits: the kernel's, else a mix of the clock and the process */
    uint64_t r = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, &r, sizeof r) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r = nm_mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_sec);
    }
    if (fd >= 0) close(fd);
    snprintf(out, n, "%s-%016llx", when, (unsigned long long)r);
}

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

static void push(char ***list, int *n, int *cap, char *item) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        char **nl = realloc(*list, sizeof(char *) * (size_t)*cap);
        if (!nl) NM_ABORT("out of memory listing checkpoints");
        *list = nl;
    }
    (*list)[(*n)++] = item;
}

static char *join(const char *dir, const char *name) {
    size_t len = strlen(dir) + strlen(name) + 2;
    char *p = nm_malloc(len);
    snprintf(p, len, "%s/%s", dir, name);
    return p;
}

/* This rank's listing of the checkpoints in dir, newest step first. */
static int list_local(const char *dir, char ***paths) {
    int n = 0, cap = 0;
    char **list = NULL;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (ckpt_step(e->d_name) >= 0) push(&list, &n, &cap, join(dir, e->d_name));
    if (d) closedir(d);
    if (n) qsort(list, (size_t)n, sizeof *list, cmp_desc);
    *paths = list;
    return n;
}

/* The run a file belongs to, as this rank reads it: 1 with an id (in id),
 * 0 readable but without one, -1 unreadable. */
static int file_run_id(const char *path, char *id, size_t n) {
    nm_error e;
    id[0] = '\0';
    hid_t f = nm_h5_open_read(path, "file", &e);
    if (f < 0) return -1;
    int has = nm_h5_attr_string(f, "run_id", id, n) == 0 && id[0];
    H5Fclose(f);
    if (!has) id[0] = '\0';
    return has;
}

/* Rank 0's list to every rank. */
static int bcast_list(MPI_Comm comm, char **list, int n, char ***out) {
    int rank;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    size_t blob_len = 0;
    char *blob = NULL;
    if (rank == 0) {
        for (int i = 0; i < n; i++) blob_len += strlen(list[i]) + 1;
        blob = nm_malloc(blob_len + 1);
        for (int i = 0, o = 0; i < n; o += (int)strlen(list[i]) + 1, i++) memcpy(blob + o, list[i], strlen(list[i]) + 1);
    }
    long hdr[2] = {n, (long)blob_len};
    NM_MPI_CHECK(MPI_Bcast(hdr, 2, MPI_LONG, 0, comm));
    if (rank != 0) {
        n = (int)hdr[0];
        blob_len = (size_t)hdr[1];
        blob = nm_malloc(blob_len + 1);
        list = nm_calloc((size_t)(n ? n : 1), sizeof(char *));
    }
    NM_MPI_CHECK(MPI_Bcast(blob, (int)blob_len, MPI_CHAR, 0, comm));
    if (rank != 0)
        for (int i = 0, o = 0; i < n; i++) {
            size_t len = strlen(blob + o) + 1;
            list[i] = nm_malloc(len);
            memcpy(list[i], blob + o, len);
            o += (int)len;
        }
    free(blob);
    *out = list;
    return n;
}

int nm_ckpt_list(const char *dir, MPI_Comm comm, char ***paths) {
    int rank, n = 0;
    char **list = NULL;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    if (rank == 0) n = list_local(dir, &list);
    return bcast_list(comm, list, n, paths);
}

int nm_ckpt_list_run(const char *dir, MPI_Comm comm, int pick_newest, char *run_id, size_t id_cap, char ***paths) {
    int rank, n = 0, kept = 0, cap = 0;
    char **all = NULL, **list = NULL;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    if (rank == 0) {
        n = list_local(dir, &all);
        char (*ids)[NM_RUN_ID_MAX] = nm_calloc((size_t)(n ? n : 1), NM_RUN_ID_MAX);
        int *kind = nm_calloc((size_t)(n ? n : 1), sizeof(int));
        if (pick_newest) { /* ids begin with their start time: the greatest is the newest run */
            run_id[0] = '\0';
            for (int i = 0; i < n; i++) {
                kind[i] = file_run_id(all[i], ids[i], NM_RUN_ID_MAX);
                if (kind[i] == 1 && strcmp(ids[i], run_id) > 0) snprintf(run_id, id_cap, "%s", ids[i]);
            }
        } else {
            for (int i = 0; i < n; i++) kind[i] = file_run_id(all[i], ids[i], NM_RUN_ID_MAX);
        }
        /* unreadable files stay in the list so that resume can say why it skips them */
        for (int i = 0; i < n; i++) {
            if (kind[i] < 0 || strcmp(ids[i], run_id) == 0) push(&list, &kept, &cap, all[i]);
            else free(all[i]);
        }
        free(all);
        free(ids);
        free(kind);
    }
    if (pick_newest) nm_bcast_text(comm, run_id, id_cap);
    return bcast_list(comm, list, kept, paths);
}

void nm_ckpt_list_free(char **paths, int n) {
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

void nm_ckpt_prune(const char *dir, int keep, const char *run_id, MPI_Comm comm) {
    int rank;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    if (keep <= 0 || rank != 0) return;
    char **paths, id[NM_RUN_ID_MAX];
    int n = list_local(dir, &paths), seen = 0;
    for (int i = 0; i < n; i++) {
        /* only this run's files: another run's checkpoints are not ours to delete */
        if (file_run_id(paths[i], id, sizeof id) >= 0 && strcmp(id, run_id) == 0 && ++seen > keep &&
            unlink(paths[i]) != 0)
            nm_warn0("could not remove old checkpoint %s: %s", paths[i], strerror(errno));
    }
    nm_ckpt_list_free(paths, n);
}

void nm_ckpt_remove_stale(const char *dir, MPI_Comm comm) {
    int rank;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    if (rank != 0) return;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        /* ckpt_<8 digits>.h5.tmp: what a killed write leaves */
        if (len != 20 || strcmp(e->d_name + 16, ".tmp") != 0) continue;
        char name[32];
        snprintf(name, sizeof name, "%.16s", e->d_name);
        if (ckpt_step(name) < 0) continue;
        char *p = join(dir, e->d_name);
        if (unlink(p) == 0) nm_log0("removed %s, left by an interrupted checkpoint write\n", p);
        free(p);
    }
    if (d) closedir(d);
}

/* Is name one of the files a run writes into out_dir? */
static int run_file(const char *name) {
    size_t len = strlen(name);
    char base[32];
    if (len == 20 && strcmp(name + 16, ".tmp") == 0) {
        snprintf(base, sizeof base, "%.16s", name);
        return ckpt_step(base) >= 0;
    }
    return ckpt_step(name) >= 0 || !strcmp(name, "run.h5") || !strcmp(name, "metrics.csv") ||
           !strcmp(name, "config.ini") || !strncmp(name, "run.h5.before-step-", 19) || !strcmp(name, "metrics.csv.tmp");
}

/* Rank 0: moves the run files of dir into dir/replaced/<id>; *where = "" if there were none. */
static int move_aside_local(const char *dir, char *where, size_t cap, nm_error *err) {
    where[0] = '\0';
    char id[NM_RUN_ID_MAX] = "", probe[NM_RUN_ID_MAX], **ck;
    int n = list_local(dir, &ck);
    for (int i = 0; i < n; i++) /* named after the most recently started run among them */
        if (file_run_id(ck[i], probe, sizeof probe) == 1 && strcmp(probe, id) > 0) snprintf(id, sizeof id, "%s", probe);
    nm_ckpt_list_free(ck, n);
    char *rh = join(dir, "run.h5");
    if (!id[0]) file_run_id(rh, id, sizeof id);
    free(rh);
    if (!id[0]) { /* files from before run ids: name the folder by the time they were replaced */
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(probe, sizeof probe, "%Y%m%dT%H%M%SZ-unnamed", &tm);
        snprintf(id, sizeof id, "%s", probe);
    }
    DIR *d = opendir(dir);
    if (!d) return nm_fail(err, "cannot read out_dir '%s': %s", dir, strerror(errno));
    struct dirent *e;
    int moved = 0;
    char target[NM_PATH_MAX + 2 * NM_RUN_ID_MAX];
    while ((e = readdir(d))) {
        if (!run_file(e->d_name)) continue;
        if (!moved) { /* the first file: make a folder no earlier move used */
            snprintf(target, sizeof target, "%s/replaced", dir);
            if (mkdir(target, 0777) != 0 && errno != EEXIST) break;
            for (int k = 1;; k++) {
                snprintf(target, sizeof target, k == 1 ? "%s/replaced/%s" : "%s/replaced/%s-%d", dir, id, k);
                if (mkdir(target, 0777) == 0) break;
                if (errno != EEXIST || k > 1000) {
                    closedir(d);
                    return nm_fail(err, "cannot create '%s': %s", target, strerror(errno));
                }
            }
        }
        char *from = join(dir, e->d_name), *to = join(target, e->d_name);
        int rc = rename(from, to);
        int why = errno;
        free(from);
        free(to);
        if (rc != 0) {
            closedir(d);
            return nm_fail(err, "cannot move '%s/%s' into '%s': %s", dir, e->d_name, target, strerror(why));
        }
        moved++;
    }
    closedir(d);
    if (moved) snprintf(where, cap, "%s", target);
    return 0;
}

int nm_run_move_aside(const char *dir, MPI_Comm comm, char *where, size_t cap, nm_error *err) {
    int rank, ok = 1;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    where[0] = '\0';
    if (rank == 0) ok = move_aside_local(dir, where, cap, err) == 0;
    nm_bcast_text(comm, where, cap);
    return nm_agree(comm, ok, err) ? 0 : -1;
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

