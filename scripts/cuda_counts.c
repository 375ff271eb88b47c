// A CUPTI injection library that counts every CUDA driver and runtime API call of a
// process (kernel launches, synchronisations, blocking copies, allocations, event
// records...), for the host-overhead profile of a training step on a GPU without Nsight
// Systems. Built by scripts/build-cuda.sh into target/cuda/libcuda_counts.so; used as
//     CUDA_INJECTION64_PATH=target/cuda/libcuda_counts.so CUDA_COUNTS_OUT=counts.json
//         meshcast benchmark-graph-format --device cuda ...
// The driver loads it at cuInit; at exit it writes one JSON object
//     {"driver": {"cuLaunchKernel": N, ...}, "runtime": {"cudaLaunchKernel": N, ...}}
// (calls counted on entry; runtime calls that go through the driver count in both).
// Two runs with different numbers of timed steps give the counts per step by
// difference (scripts/gpu-measure.sh, part `step`).
#include <cupti.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define DRIVER_IDS CUPTI_DRIVER_TRACE_CBID_SIZE
#define RUNTIME_IDS CUPTI_RUNTIME_TRACE_CBID_SIZE

static atomic_ullong driver_calls[DRIVER_IDS];
static const char* driver_names[DRIVER_IDS];
static atomic_ullong runtime_calls[RUNTIME_IDS];
static const char* runtime_names[RUNTIME_IDS];
static CUpti_SubscriberHandle subscriber;

static void CUPTIAPI on_call(void* user, CUpti_CallbackDomain domain, CUpti_CallbackId id,
                             const void* data) {
  (void)user;
  const CUpti_CallbackData* call = (const CUpti_CallbackData*)data;
  if (call->callbackSite != CUPTI_API_ENTER) return;
  if (domain == CUPTI_CB_DOMAIN_DRIVER_API && id < DRIVER_IDS) {
    driver_names[id] = call->functionName;
    atomic_fetch_add_explicit(&driver_calls[id], 1, memory_order_relaxed);
  } else if (domain == CUPTI_CB_DOMAIN_RUNTIME_API && id < RUNTIME_IDS) {
    runtime_names[id] = call->functionName;
    atomic_fetch_add_explicit(&runtime_calls[id], 1, memory_order_relaxed);
  }
}

static void write_table(FILE* out, const char* key, atomic_ullong* calls, const char** names,
                        int ids) {
  fprintf(out, "\"%s\": {", key);
  int first = 1;
  for (int i = 0; i < ids; i++) {
    unsigned long long n = atomic_load(&calls[i]);
    if (n == 0 || names[i] == NULL) continue;
    fprintf(out, "%s\"%s\": %llu", first ? "" : ", ", names[i], n);
    first = 0;
  }
  fprintf(out, "}");
}

static void write_counts(void) {
  cuptiUnsubscribe(subscriber);
  const char* path = getenv("CUDA_COUNTS_OUT");
  FILE* out = path ? fopen(path, "w") : NULL;
  if (out == NULL) out = stderr;
  fprintf(out, "{");
  write_table(out, "driver", driver_calls, driver_names, DRIVER_IDS);
  fprintf(out, ", ");
  write_table(out, "runtime", runtime_calls, runtime_names, RUNTIME_IDS);
  fprintf(out, "}\n");
  if (out != stderr) fclose(out);
}

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
int InitializeInjection(void) {
  if (cuptiSubscribe(&subscriber, (CUpti_CallbackFunc)on_call, NULL) != CUPTI_SUCCESS ||
      cuptiEnableDomain(1, subscriber, CUPTI_CB_DOMAIN_DRIVER_API) != CUPTI_SUCCESS ||
      cuptiEnableDomain(1, subscriber, CUPTI_CB_DOMAIN_RUNTIME_API) != CUPTI_SUCCESS) {
    fprintf(stderr, "cuda_counts: CUPTI refused the subscription: nothing counted\n");
    return 0;
  }
  atexit(write_counts);
  return 1;
}
