/* Every public function's error path, through the installed public header:
 * bad arguments return a negative code and a message, never abort; run under
 * AddressSanitizer/LeakSanitizer by tests/install.sh, so a leak on an error
 * path fails it. usage: errors WORK_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nanomoe/nanomoe.h>

static int failures = 0, checks = 0;

/* Open MPI unloads its plugins at exit, after which LeakSanitizer cannot name
 * the module of their (suppressed) allocations; keeping them loaded lets the
 * suppressions in tests/install.sh match. This program exports dlclose
 * (linked with -rdynamic), which takes precedence over libc's. */
int dlclose(void *handle);
int dlclose(void *handle) {
    (void)handle;
    return 0;
}

/* rc must be negative and the message must contain `want`. */
static void expect_error(int rc, const nm_error *err, const char *want, const char *what) {
    checks++;
    if (rc >= 0 || !strstr(err->msg, want)) {
        failures++;
        fprintf(stderr, "FAIL %s: rc %d, message '%s' (expected one containing '%s')\n", what, rc, err->msg, want);
    } else {
        printf("ok - %s: %s\n", what, err->msg);
    }
}

#define ERR(call, want)                              \
    do {                                             \
        nm_error e_ = {{0}};                         \
        expect_error((call), &e_, want, #call);      \
    } while (0)
#define e (&e_)

static int logged = 0;
static void count_log(int level, const char *msg, void *user) {
    (void)level, (void)msg, (void)user;
    logged++;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *dir = argv[1];
    char text[512], notes[512], missing[512];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    snprintf(notes, sizeof notes, "%s/notes.txt", dir);
    snprintf(missing, sizeof missing, "%s/nope/none.h5", dir);
    FILE *f = fopen(text, "w");
    for (int i = 0; i < 400; i++) fputs("to be or not to be, that is the question. ", f);
    fclose(f);
    f = fopen(notes, "w");
    fputs("not a checkpoint", f);
    fclose(f);

    nm_config cfg;
    nm_config_defaults(&cfg);
    cfg.d_model = 16, cfg.n_heads = 2, cfg.d_ff = 16, cfg.n_layers = 1, cfg.block_size = 8, cfg.batch_size = 2;
    nm_vocab vocab;
    nm_dataset data;
    nm_error ok_err;
    if (nm_dataset_load(&data, text, NULL, &ok_err) != 0) return 1;
    vocab = data.vocab;
    cfg.vocab_size = vocab.size;
    int V = vocab.size;

    /* configuration */
    ERR(nm_config_set(&cfg, "n_expert", "8", e), "n_experts");
    ERR(nm_config_set(&cfg, "top_k", "x", e), "top_k");
    ERR(nm_config_set_pair(&cfg, "nokey", e), "key=value");
    ERR(nm_config_load_ini(&cfg, missing, e), "none.h5");
    nm_config bad = cfg;
    bad.top_k = 9;
    ERR(nm_config_validate(&bad, e), "top_k=9");

    /* data */
    unsigned char desc[3] = {'b', 'a', 'c'};
    nm_vocab v2;
    ERR(nm_vocab_from_bytes(&v2, desc, 3, e), "ascending");
    int32_t ids[4];
    ERR(nm_vocab_encode(&vocab, (const unsigned char *)"~", 1, ids, e), "'~'");
    nm_dataset d2;
    ERR(nm_dataset_load(&d2, missing, NULL, e), "none.h5");
    ERR(nm_dataset_check_windows(&data, 100000, text, e), "block_size");
    int32_t bad_ids[2] = {0, 999};
    char out[8];
    ERR(nm_vocab_decode(&vocab, bad_ids, 2, out, e), "999");
    ERR(nm_vocab_decode(NULL, bad_ids, 2, out, e), "NULL");

    /* models */
    nm_model *m = NULL;
    ERR(nm_model_new(NULL, &cfg, 1, e), "NULL");
    ERR(nm_model_new(&m, NULL, 1, e), "NULL");
    ERR(nm_model_new(&m, &cfg, 0, e), "max_batch=0");
    bad = cfg;
    bad.vocab_size = 0;
    ERR(nm_model_new(&m, &bad, 1, e), "vocab_size=0");
    bad = cfg;
    bad.d_model = 15;
    ERR(nm_model_new(&m, &bad, 1, e), "d_model=15");
    ERR(nm_model_load(&m, missing, 1, NULL, e), "none.h5");
    ERR(nm_model_load(&m, notes, 1, NULL, e), "not an HDF5 file");
    ERR(nm_model_load(&m, NULL, 1, NULL, e), "NULL");
    nm_error err;
    if (nm_model_new(&m, &cfg, 2, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int32_t x[16] = {0}, y[16] = {0};
    x[5] = V; /* out of the vocabulary */
    ERR(nm_model_forward_tokens(m, x, 2, 8, NULL, NULL, e), "x[5]");
    x[5] = 0;
    ERR(nm_model_forward_tokens(m, x, 3, 8, NULL, NULL, e), "B=3");
    ERR(nm_model_forward_tokens(m, x, 2, 9, NULL, NULL, e), "T=9");
    ERR(nm_model_forward_tokens(NULL, x, 2, 8, NULL, NULL, e), "NULL");
    nm_losses l;
    y[3] = -1;
    ERR(nm_model_evaluate(m, x, y, 2, 8, &l, e), "y[3]");
    ERR(nm_model_evaluate(m, x, NULL, 2, 8, &l, e), "NULL");
    ERR(nm_model_save(m, missing, &vocab, 0, e), "nope");
    ERR(nm_model_save(m, missing, NULL, 0, e), "NULL");
    nm_vocab small = vocab;
    small.size = 3;
    ERR(nm_model_save(m, missing, &small, 0, e), "vocabulary has 3");
    int32_t prompt[2] = {0, V};
    ERR(nm_generate(m, prompt, 2, 5, 0.8, 40, 1, NULL, NULL, NULL, NULL, e), "prompt[1]");
    ERR(nm_generate(m, prompt, 0, 5, 0.8, 40, 1, NULL, NULL, NULL, NULL, e), "0 tokens");
    ERR(nm_generate(m, prompt, 1, -1, 0.8, 40, 1, NULL, NULL, NULL, NULL, e), "max_new=-1");
    ERR(nm_generate(m, prompt, 1, 5, -1.0, 40, 1, NULL, NULL, NULL, NULL, e), "temperature=-1");
    ERR(nm_generate(m, prompt, 1, 5, 0.8, -2, 1, NULL, NULL, NULL, NULL, e), "top_k=-2");
    checks++;
    if (nm_model_get_config(NULL) || nm_model_logits(NULL)) failures++, fprintf(stderr, "FAIL getters of NULL\n");
    nm_model_delete(NULL); /* must be harmless */

    /* trainers */
    nm_trainer *t = NULL;
    ERR(nm_trainer_new(NULL, &cfg, e), "NULL");
    bad = cfg;
    bad.vocab_size = 300;
    ERR(nm_trainer_new(&t, &bad, e), "vocab_size=300");
    ERR(nm_trainer_load(&t, &cfg, missing, e), "none.h5");
    if (nm_trainer_new(&t, &cfg, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    x[0] = 1000;
    ERR(nm_trainer_step(t, x, y, &l, e), "x[0]");
    x[0] = 0;
    ERR(nm_trainer_step(t, x, NULL, &l, e), "NULL");
    ERR(nm_trainer_save(t, missing, &vocab, e), "nope");
    char good[512];
    snprintf(good, sizeof good, "%s/good.h5", dir);
    if (nm_trainer_save(t, good, &vocab, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    bad = cfg;
    bad.d_ff = 32;
    nm_trainer *t2 = NULL; /* a failed load sets its output to NULL: not t's */
    ERR(nm_trainer_load(&t2, &bad, good, e), "d_ff=32");
    checks++;
    if (nm_trainer_get_model(NULL) || nm_trainer_get_step(NULL) != -1) failures++, fprintf(stderr, "FAIL trainer getters\n");
    nm_trainer_delete(NULL);

    /* the training loop */
    ERR(nm_train_run(NULL, NULL, e), "NULL");
    bad = cfg;
    strcpy(bad.data, missing);
    snprintf(bad.out_dir, sizeof bad.out_dir, "%s/run", dir);
    ERR(nm_train_run(&bad, NULL, e), "none.h5");
    bad = cfg;
    strcpy(bad.data, text);
    bad.out_dir[0] = '\0';
    ERR(nm_train_run(&bad, NULL, e), "out_dir");
    bad.top_k = 7;
    ERR(nm_train_run(&bad, NULL, e), "top_k=7");

    /* layers */
    nm_mha *a = NULL;
    ERR(nm_mha_new(&a, 2, 8, 16, 3, e), "divisible");
    ERR(nm_mha_new(&a, 0, 8, 16, 2, e), "B=0");
    ERR(nm_mha_new(NULL, 2, 8, 16, 2, e), "NULL");
    if (nm_mha_new(&a, 2, 8, 16, 2, &err) != 0) return 1;
    nm_layer_view w;
    memset(&w, 0, sizeof w);
    float buf[16 * 16];
    ERR(nm_mha_forward(a, buf, buf, &w, e), "qkv_w");
    ERR(nm_mha_backward(a, buf, &w, buf, &w, e), "qkv_w");
    ERR(nm_mha_forward(NULL, buf, buf, &w, e), "NULL");
    nm_mha_delete(a);
    nm_mha_delete(NULL);
    nm_moe_layer *ml = NULL;
    ERR(nm_moe_layer_new(&ml, 2, 8, 16, 16, 4, 5, e), "K=5");
    ERR(nm_moe_layer_new(&ml, 2, 8, 16, 0, 4, 2, e), "F=0");
    if (nm_moe_layer_new(&ml, 2, 8, 16, 16, 4, 2, &err) != 0) return 1;
    double aux;
    ERR(nm_moe_layer_forward(ml, buf, buf, &w, &aux, e), "router_w");
    ERR(nm_moe_layer_backward(ml, buf, &w, buf, &w, 0.01, e), "router_w");
    nm_moe_layer_delete(ml);
    nm_moe_layer_delete(NULL);
    nm_block *b = NULL;
    bad = cfg;
    bad.top_k = 7;
    ERR(nm_block_new(&b, &bad, 2, 8, e), "top_k=7");
    ERR(nm_block_new(&b, &cfg, 2, 9, e), "T=9");
    if (nm_block_new(&b, &cfg, 2, 8, &err) != 0) return 1;
    ERR(nm_block_forward(b, NULL, buf, &w, &aux, e), "NULL");
    ERR(nm_block_backward(b, buf, NULL, buf, &w, e), "NULL");
    nm_block_delete(b);
    nm_block_delete(NULL);

    /* silent by default; a log function receives the library's messages */
    checks++;
    if (logged != 0) failures++, fprintf(stderr, "FAIL the library logged without a log function\n");
    nm_set_log(count_log, NULL);
    bad = cfg;
    strcpy(bad.data, text);
    snprintf(bad.out_dir, sizeof bad.out_dir, "%s/logrun", dir);
    bad.max_iters = 2, bad.eval_interval = 0;
    if (nm_train_run(&bad, NULL, &err) != 0) fprintf(stderr, "FAIL nm_train_run: %s\n", err.msg), failures++;
    checks++;
    if (logged < 3) failures++, fprintf(stderr, "FAIL only %d log messages from a training run\n", logged);
    nm_set_log(NULL, NULL);

    nm_model_delete(m);
    nm_trainer_delete(t);
    nm_dataset_free(&data);
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
