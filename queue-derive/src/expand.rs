//! Writes the job struct, its constructor, its `Job` impl and its registration.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::{Attribute, Ident, ItemFn};

use crate::ast::{self, JobFn, Role};
use crate::attr::{self, Args, Errors};

/// The whole macro: on any error, the errors plus the user's function as
/// written, so one mistake does not cascade into unrelated ones.
pub(crate) fn background_job(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = attr::parse(args, &mut errors);
    let item: ItemFn = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(_) => {
            let error = syn::Error::new_spanned(
                &item,
                "#[background_job] can only be used on functions: \
                 `#[background_job] fn name(args) -> Result<(), PerformError> { .. }`",
            );
            return error.into_compile_error();
        }
    };
    let job = ast::analyze(item, &mut errors);
    if args.transaction.is_some() && !job.takes_connection() {
        errors.push(syn::Error::new(
            args.transaction.unwrap_or_else(Span::call_site),
            "`transaction` runs the job's queries on the transaction that holds its lock, but \
             this function takes no `&mut PgConnection`; add one, or remove `transaction`",
        ));
    }
    if job.is_async {
        if let Some(span) = args.transaction {
            errors.push(syn::Error::new(
                span,
                "`transaction` is for plain jobs: an async job's queries run on its own \
                 `AsyncPgConnection`; remove `transaction` (or make the job a plain `fn`)",
            ));
        }
    } else if let Some((_, _, span)) = &args.timeout {
        errors.push(syn::Error::new(
            *span,
            "`timeout` cancels an `async fn` job at its deadline; a plain job's thread cannot be \
             stopped from outside. Make the job `async`, or remove `timeout`",
        ));
    }
    if let Some((field, span)) = &args.concurrency_key {
        let arguments: Vec<String> = job.arguments().map(|(p, _)| p.ident.to_string()).collect();
        if !arguments.contains(field) {
            errors.push(syn::Error::new(
                *span,
                if arguments.is_empty() {
                    format!(
                        "`concurrency_key` names the argument whose value is each job's key, \
                         but this job has no arguments; add one (`{field}: ..`), or give the \
                         key at enqueue with `EnqueueOptions::concurrency_key`"
                    )
                } else {
                    format!(
                        "`concurrency_key = \"{field}\"` names no argument of this job; name \
                         one of {}",
                        arguments
                            .iter()
                            .map(|a| format!("`{a}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            ));
        }
    }
    match errors.into_result() {
        Ok(()) => expand(&args, &job),
        Err(error) => {
            let function = fallback(job.item);
            let error = error.into_compile_error();
            quote!(#function #error)
        }
    }
}

/// The user's function, cleaned of our parameter attributes, so that its
/// body is still checked (and its name still resolves) next to our errors.
fn fallback(item: ItemFn) -> TokenStream {
    quote!(#[allow(dead_code)] #item)
}

fn expand(args: &Args, job: &JobFn) -> TokenStream {
    let krate = match args.krate.clone().map_or_else(attr::skiplock_path, Ok) {
        Ok(krate) => krate,
        Err(message) => {
            let error = syn::Error::new(Span::call_site(), message).into_compile_error();
            let function = fallback(job.item.clone());
            return quote!(#function #error);
        }
    };
    let serde_path = attr::path_string(&syn::parse_quote!(#krate::__private::serde));
    let item = &job.item;
    let vis = &item.vis;
    let fn_ident = &item.sig.ident;
    let fn_token = &item.sig.fn_token;
    let struct_ident = format_ident!(
        "{}Job",
        camel_case(&fn_ident.to_string()),
        span = fn_ident.span()
    );
    let job_type = args.name.clone().unwrap_or_else(|| fn_ident.to_string());

    // The stored arguments: fields, constructor parameters.
    let arg_idents: Vec<&Ident> = job.arguments().map(|(p, _)| &p.ident).collect();
    // Each argument's type is named once as a `JobArgument` (the one error
    // when it cannot be stored, on its type), and its field is
    // (de)serialized through helpers that reach the type's `JobArgument`
    // implementation by method lookup on `Probe` (see
    // `skiplock::__private::Probe`): they compile whatever the type, so
    // serde's three call sites add no errors of their own. A field whose
    // `#[serde]` says how it is stored is left to the user.
    let mut argument_checks = Vec::new();
    let mut argument_helpers = Vec::new();
    let mut fields = Vec::new();
    for (p, serde_attrs) in job.arguments() {
        let (ident, ty) = (&p.ident, &p.ty);
        let doc = format!("The `{ident}` argument.");
        let through = (!serde_attrs.iter().any(says_how_to_serialize)).then(|| {
            let span = syn::spanned::Spanned::span(ty);
            argument_checks.push(quote_spanned! {span=>
                const _: () = <#ty as #krate::__private::JobArgument>::STORABLE;
            });
            let name = syn::ext::IdentExt::unraw(ident);
            let ser = format_ident!("__skiplock_serialize_{}", name);
            let de = format_ident!("__skiplock_deserialize_{}", name);
            argument_helpers.push(quote! {
                // Generic names no user type is likely to have: `#ty` is
                // read where they are in scope.
                #[doc(hidden)]
                fn #ser<__SkiplockS: #krate::__private::serde::Serializer>(
                    value: &#ty,
                    serializer: __SkiplockS,
                ) -> ::core::result::Result<__SkiplockS::Ok, __SkiplockS::Error> {
                    #[allow(unused_imports)]
                    use #krate::__private::{Storable as _, Unstorable as _};
                    (&&#krate::__private::Probe::<#ty>::new()).serialize_argument(value, serializer)
                }

                #[doc(hidden)]
                fn #de<'__skiplock_de, __SkiplockD>(
                    deserializer: __SkiplockD,
                ) -> ::core::result::Result<#ty, __SkiplockD::Error>
                where
                    __SkiplockD: #krate::__private::serde::Deserializer<'__skiplock_de>,
                {
                    #[allow(unused_imports)]
                    use #krate::__private::{Storable as _, Unstorable as _};
                    (&&#krate::__private::Probe::<#ty>::new()).deserialize_argument(deserializer)
                }
            });
            let ser = syn::LitStr::new(&format!("{struct_ident}::{ser}"), Span::call_site());
            let de = syn::LitStr::new(&format!("{struct_ident}::{de}"), Span::call_site());
            quote!(#[serde(serialize_with = #ser, deserialize_with = #de)])
        });
        fields.push(quote!(#[doc = #doc] #(#serde_attrs)* #through #vis #ident: #ty));
    }
    let constructor_params = job.arguments().map(|(p, _)| {
        let (ident, ty) = (&p.ident, &p.ty);
        quote!(#ident: #ty)
    });

    // The call of the body, in the user's parameter order.
    let ctx = Ident::new("__queue_ctx", Span::mixed_site());
    let db = Ident::new("__queue_db", Span::mixed_site());
    let conn = Ident::new("__queue_conn", Span::mixed_site());
    let call_args = job.params.iter().map(|p| match &p.role {
        Role::Context(_) => quote!(#ctx),
        Role::Connection if job.is_async => quote!(&mut *#conn),
        Role::Connection => quote!(#db.get()?),
        Role::Argument(_) => {
            let ident = &p.ident;
            quote!(#ident)
        }
    });
    let context_ty = job.context().map_or_else(|| quote!(()), |ty| quote!(#ty));
    let ctx_param = if job.context().is_some() {
        quote!(#ctx)
    } else {
        quote!(_)
    };
    let db_param = if job.takes_connection() || job.is_async {
        quote!(#db)
    } else {
        quote!(_)
    };

    let mut consts = Vec::new();
    if let Some(queue) = &args.queue {
        consts.push(quote!(const QUEUE: &'static str = #queue;));
    }
    if args.unique {
        consts.push(quote!(
            const UNIQUE: bool = true;
        ));
    }
    if let Some(priority) = args.priority {
        consts.push(quote!(const PRIORITY: i16 = #priority;));
    }
    if let Some(max) = args.max_concurrent {
        consts.push(quote!(
            const MAX_CONCURRENT: ::core::option::Option<u32> = ::core::option::Option::Some(#max);
        ));
    }
    if let Some((limit, period_ms)) = args.rate {
        consts.push(quote!(
            const RATE: ::core::option::Option<#krate::Rate> =
                ::core::option::Option::Some(#krate::Rate::__checked(#limit, #period_ms));
        ));
    }
    // The argument's own identifier (checked to exist before expanding).
    let key_field = args.concurrency_key.as_ref().and_then(|(field, _)| {
        job.arguments()
            .map(|(p, _)| &p.ident)
            .find(|ident| *ident == field)
    });
    let concurrency_key = key_field.map(|field| {
        quote!(
            fn concurrency_key(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(#krate::__private::concurrency_key_of(&self.#field))
            }
        )
    });
    if args.max_attempts.is_some()
        || args.backoff_micros.is_some()
        || args.max_backoff_micros.is_some()
    {
        let mut policy = quote!(#krate::RetryPolicy::DEFAULT);
        if let Some(n) = args.max_attempts {
            policy = quote!(#policy.max_attempts(#n));
        }
        if let Some(us) = args.backoff_micros {
            policy = quote!(#policy.initial_backoff(::core::time::Duration::from_micros(#us)));
        }
        if let Some(us) = args.max_backoff_micros {
            policy = quote!(#policy.max_backoff(::core::time::Duration::from_micros(#us)));
        }
        consts.push(quote!(const RETRY_POLICY: #krate::RetryPolicy = #policy;));
    }
    if job.is_async {
        consts.push(quote!(
            const ASYNC: bool = true;
        ));
    }
    if args.transaction.is_some() {
        consts.push(quote!(
            const CONNECTION: #krate::ConnectionMode = #krate::ConnectionMode::JobTransaction;
        ));
    }

    // The body keeps the user's tokens and spans: its errors and lints are
    // the user's. The function's attributes: doc comments describe the
    // constructor, `cfg` applies to every item, lints to the constructor and
    // the body, and everything else (`#[tracing::instrument(skip(mailer))]`,
    // say) to the body, whose parameters they name.
    let placed = |wanted: fn(&Attribute) -> bool| -> Vec<&Attribute> {
        item.attrs.iter().filter(|a| wanted(a)).collect()
    };
    let cfg_attrs = placed(|a| a.path().is_ident("cfg"));
    let body_attrs = placed(|a| !a.path().is_ident("doc") && !a.path().is_ident("cfg"));
    let constructor_attrs = placed(|a| a.path().is_ident("doc") || is_lint_attr(a));
    let perform_inputs = &item.sig.inputs;
    let asyncness = &item.sig.asyncness;
    let perform_output = &item.sig.output;
    let block = &item.block;
    let result = quote_spanned!(job.output_span=> #krate::__private::job_result(__queue_result));
    let run_body = if job.is_async {
        // The same engine runs it: the worker's thread waits for the body
        // on the runner's runtime.
        let timeout = match &args.timeout {
            Some((micros, written, _)) => quote!(::core::option::Option::Some((
                ::core::time::Duration::from_micros(#micros),
                #written,
            ))),
            None => quote!(::core::option::Option::None),
        };
        let (pool, get) = if job.takes_connection() {
            (
                quote!(let __queue_pool = #krate::__private::async_pool(#db)?;),
                quote!(let mut #conn = #krate::__private::async_connection(&__queue_pool).await?;),
            )
        } else {
            (quote!(), quote!())
        };
        quote!(#krate::__async_job! {
            #pool
            #krate::__private::run_async(#db, #timeout, async move {
                #get
                let __queue_result = Self::perform(#(#call_args),*).await;
                #result
            })
        })
    } else {
        quote!(
            let __queue_result = Self::perform(#(#call_args),*);
            #result
        )
    };

    // The user's braces, so the constructor's span is the user's function
    // and lints such as `dead_code` report it like an ordinary function.
    let mut constructor_body = TokenStream::new();
    item.block
        .brace_token
        .surround(&mut constructor_body, |tokens| {
            tokens.extend(quote!(#struct_ident { #(#arg_idents),* }));
        });
    let struct_doc =
        format!("The job built by [`{fn_ident}`], stored under the job type name `{job_type}`.");
    let constructor_doc_note =
        format!("\n\nBuilds the `{job_type}` job; store it with `skiplock::Job::enqueue`.");

    let argument_checks = argument_checks
        .iter()
        .map(|check| quote!(#(#cfg_attrs)* #check));
    quote! {
        #(#cfg_attrs)*
        #(#constructor_attrs)*
        #[doc = #constructor_doc_note]
        #[must_use = "a job does nothing until it is enqueued"]
        #vis #fn_token #fn_ident(#(#constructor_params),*) -> #struct_ident #constructor_body

        #(#cfg_attrs)*
        #[doc = #struct_doc]
        #[derive(#krate::__private::serde::Serialize, #krate::__private::serde::Deserialize)]
        #[serde(crate = #serde_path)]
        #vis struct #struct_ident {
            #(#fields,)*
        }

        #(#argument_checks)*

        #(#cfg_attrs)*
        impl #struct_ident {
            /// Runs the job's body directly, as the function was written
            /// (for unit tests; runners call it through `skiplock::Job::run`).
            #(#body_attrs)*
            #vis #asyncness fn perform(#perform_inputs) #perform_output #block

            #(#argument_helpers)*
        }

        #(#cfg_attrs)*
        impl #krate::Job for #struct_ident {
            const JOB_TYPE: &'static str = #job_type;
            #(#consts)*
            type Context = #context_ty;

            #concurrency_key

            fn run(
                self,
                #ctx_param: &Self::Context,
                #db_param: &mut #krate::JobConnection<'_>,
            ) -> ::core::result::Result<(), #krate::PerformError> {
                let #struct_ident { #(#arg_idents),* } = self;
                #run_body
            }
        }

        #(#cfg_attrs)*
        #krate::__private::inventory::submit! {
            #krate::__private::JobDescriptor::of::<#struct_ident>()
        }
    }
}

/// Whether a `#[serde(..)]` of the user's already says how the field is
/// (de)serialized, or that it is not.
fn says_how_to_serialize(attr: &Attribute) -> bool {
    let text = attr.meta.to_token_stream().to_string();
    ["with", "skip", "getter"]
        .iter()
        .any(|key| text.contains(key))
}

/// Lint attributes apply to the body too; everything else stays on the constructor.
fn is_lint_attr(attr: &Attribute) -> bool {
    ["allow", "expect", "warn", "deny", "forbid"]
        .iter()
        .any(|lint| attr.path().is_ident(lint))
}

/// `add_crate` -> `AddCrate`.
fn camel_case(snake: &str) -> String {
    snake
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_of_function_names() {
        assert_eq!(camel_case("add_crate"), "AddCrate");
        assert_eq!(camel_case("yank"), "Yank");
        assert_eq!(camel_case("_private__thing_"), "PrivateThing");
        assert_eq!(camel_case("sync2_index"), "Sync2Index");
    }

    #[test]
    fn errors_come_with_the_function_itself() {
        let out = background_job(
            quote!(priority = 1_000_000),
            quote!(
                fn f() -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let text = out.to_string();
        assert!(text.contains("priority 1000000 is out of range"), "{text}");
        assert!(text.contains("fn f"), "{text}");
    }
}
