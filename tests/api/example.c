/* A program that uses nanomoe only through its installed public header and
 * library: a model from the defaults, forward on a batch (shapes; an untrained
 * model's loss is close to ln V), 50 training steps on a small text (the loss
 * falls), save, reload, and 100 characters generated twice with one seed.
 * usage: example TEXT_FILE OUT_DIR */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nanomoe/nanomoe.h>

static int failures = 0;
#define EXPECT(cond, ...)                                    \
    do {                                                     \
        if (!(cond)) {                                       \
            failures++;                                      \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                    \
            fputc('\n', stderr);                             \
        }                                                    \
    } while (0)
#define TRY(call)                                                            \
    do {                                                                     \
        if ((call) != 0) {                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, err.msg); \
            return 1;                                                        \
        }                                                                    \
    } while (0)

static int collect(int32_t token, void *user) {
    (void)token;
    (*(int *)user)++;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: example TEXT_FILE OUT_DIR\n");
        return 2;
    }
    printf("nanomoe %s\n", nm_version());
    nm_error err;
    nm_dataset data;
    TRY(nm_dataset_load(&data, argv[1], NULL, &err));
    nm_config cfg;
    nm_config_defaults(&cfg); /* the reference model: d_model 128, 4 layers, 4 experts, top-2 */
    cfg.vocab_size = data.vocab.size;
    cfg.batch_size = 8;
    cfg.learning_rate = 2e-3;
    int B = cfg.batch_size, T = cfg.block_size, V = cfg.vocab_size;
    nm_param_counts pc = nm_param_count(&cfg);
    printf("model: %zu parameters, %zu active per token, vocabulary %d\n", pc.total, pc.active_per_token, V);

    /* forward on a batch */
    nm_model *m;
    TRY(nm_model_new(&m, &cfg, B, &err));
    int32_t *x = malloc(sizeof(int32_t) * B * T), *y = malloc(sizeof(int32_t) * B * T);
    float *logits = malloc(sizeof(float) * B * T * V);
    nm_batch_sample(data.tokens, data.n_train, T, 7, NM_STREAM_TRAIN, 1, 0, B, x, y);
    double aux = -1;
    TRY(nm_model_forward_tokens(m, x, B, T, logits, &aux, &err));
    EXPECT(memcmp(logits, nm_model_logits(m), sizeof(float) * B * T * V) == 0, "model-owned logits differ");
    nm_losses l0;
    TRY(nm_model_evaluate(m, x, y, B, T, &l0, &err));
    printf("untrained: loss %.4f ce %.4f aux %.4f (ln V = %.4f)\n", l0.loss, l0.ce, l0.aux, log(V));
    EXPECT(fabs(l0.ce - log(V)) < 0.3, "untrained ce %.4f is not close to ln V = %.4f", l0.ce, log(V));
    EXPECT(aux > 0 && fabs(aux - l0.aux) < 1e-9, "aux %g vs %g", aux, l0.aux);
    nm_model_delete(m);

    /* 50 training steps */
    nm_trainer *t;
    TRY(nm_trainer_new(&t, &cfg, &err));
    nm_losses first = {0}, last = {0};
    for (int s = 1; s <= 50; s++) {
        nm_batch_sample(data.tokens, data.n_train, T, 7, NM_STREAM_TRAIN, (uint64_t)s, 0, B, x, y);
        TRY(nm_trainer_step(t, x, y, s == 1 ? &first : &last, &err));
    }
    printf("training: step 1 loss %.4f, step 50 loss %.4f\n", first.loss, last.loss);
    EXPECT(last.loss < first.loss - 0.5, "the loss did not fall: %.4f -> %.4f", first.loss, last.loss);
    EXPECT(nm_trainer_get_step(t) == 50, "step count %lld", (long long)nm_trainer_get_step(t));

    /* save, reload: the same evaluation */
    char path[1024];
    snprintf(path, sizeof path, "%s/example.h5", argv[2]);
    TRY(nm_trainer_save(t, path, &data.vocab, &err));
    nm_losses before, after;
    TRY(nm_model_evaluate(nm_trainer_get_model(t), x, y, B, T, &before, &err));
    nm_vocab vocab;
    TRY(nm_model_load(&m, path, 1, &vocab, &err));
    nm_model *m2;
    TRY(nm_model_load(&m2, path, B, NULL, &err));
    TRY(nm_model_evaluate(m2, x, y, B, T, &after, &err));
    EXPECT(before.loss == after.loss, "reloaded model: loss %.8f vs %.8f", after.loss, before.loss);
    nm_trainer *t2;
    TRY(nm_trainer_load(&t2, &cfg, path, &err));
    EXPECT(nm_trainer_get_step(t2) == 50, "resumed trainer at step %lld", (long long)nm_trainer_get_step(t2));
    nm_trainer_delete(t2);
    nm_model_delete(m2);
    nm_trainer_delete(t);

    /* generation: same seed, same text */
    int32_t prompt[1] = {vocab.id_of['\n'] >= 0 ? vocab.id_of['\n'] : 0}, a[100], b[100];
    int n1 = 0, n2 = 0, seen = 0;
    TRY(nm_generate(m, prompt, 1, 100, 0.8, 40, 42, collect, &seen, a, &n1, &err));
    TRY(nm_generate(m, prompt, 1, 100, 0.8, 40, 42, NULL, NULL, b, &n2, &err));
    char text[101];
    TRY(nm_vocab_decode(&vocab, a, 100, text, &err));
    printf("generated: %s\n", text);
    EXPECT(n1 == 100 && n2 == 100 && seen == 100, "generated %d and %d tokens, callback saw %d", n1, n2, seen);
    EXPECT(memcmp(a, b, sizeof a) == 0, "the same seed gave different text");
    nm_model_delete(m);
    nm_dataset_free(&data);
    free(x), free(y), free(logits);
    printf("%s\n", failures ? "example: FAILED" : "example: ok");
    return failures ? 1 : 0;
}
